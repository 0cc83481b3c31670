//! The shape of `src/` cannot drift: the module graph has no import cycle, and
//! no file is over 500 lines.
//!
//! How the cycle check works: every `.rs` file under `src/` is one module
//! (`src/a/mod.rs` and `src/a.rs` are `a`, `src/a/b.rs` is `a::b`; `main.rs`
//! is the binary and is skipped). Inline modules (`pub mod kind { .. }`) are
//! folded into their file; test code (`#[cfg(test)] mod tests`, inline or a
//! file) is left out, since tests may use anything. Each file is parsed with
//! `syn`, and every path that names the crate (`use crate::..`,
//! `crate::a::b::X` in code, `super::..` and `self::..` resolved from the
//! module they appear in, and the same inside macro invocations) becomes an
//! edge to the longest module that path names. A parent has an edge to each
//! child it declares (it is compiled with them and re-exports from them); a
//! module naming its own ancestor makes no edge. So a child using its parent
//! is not a cycle, but `config -> source -> source::github -> config` is: the
//! file that names `config` is compiled into `source`, which `config` builds.
//! The graph must be acyclic; on failure every strongly connected component is
//! printed as cycles `a::b -> c -> a::b`, each edge with the file and line
//! that makes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The hard limit on the length of one file under `src/`.
const MAX_LINES: usize = 500;

/// A module path below the crate root: `["config", "units"]`.
type ModPath = Vec<String>;

/// Where a reference to another module was seen.
#[derive(Clone, Debug)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `src/config/units.rs` → `config::units`; `src/lib.rs` → the root (empty).
fn module_of(rel: &Path) -> ModPath {
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && stem == "lib")) {
        parts.push(stem.to_owned());
    }
    parts
}

fn show(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Collects the crate paths named in one file.
struct Refs<'a> {
    /// The module the visitor is in now: the file's module plus any inline
    /// `mod x { .. }` entered.
    scope: ModPath,
    modules: &'a BTreeSet<ModPath>,
    file: String,
    /// Target module → first place it is named.
    found: BTreeMap<ModPath, Site>,
    /// Modules declared under `#[cfg(test)]`.
    test_only: BTreeSet<ModPath>,
}

/// `#[cfg(test)]`: test code is not part of the module graph.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
}

impl Refs<'_> {
    /// Resolve `crate::a::b::X`, `super::X`, `self::X` to the longest known
    /// module it names. Paths starting anywhere else name an external crate, a
    /// prelude item or something already in scope (reached through a `use`
    /// that was itself recorded).
    fn resolve(&mut self, segments: &[String], line: usize) {
        let Some(first) = segments.first() else { return };
        let (mut base, rest) = match first.as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "self" => (self.scope.clone(), &segments[1..]),
            "super" => {
                let mut base = self.scope.clone();
                let mut i = 0;
                while segments.get(i).map(String::as_str) == Some("super") {
                    base.pop();
                    i += 1;
                }
                (base, &segments[i..])
            }
            _ => return,
        };
        let mut target = base.clone();
        for segment in rest {
            base.push(segment.clone());
            if self.modules.contains(&base) {
                target = base.clone();
            }
        }
        // Inline modules are folded into their file: name the file's module.
        while !self.modules.contains(&target) && !target.is_empty() {
            target.pop();
        }
        self.found.entry(target).or_insert_with(|| Site {
            file: self.file.clone(),
            line,
            path: segments.join("::"),
        });
    }

    /// Paths inside macro invocations are only tokens: find `crate :: a :: b`
    /// and `super :: ..` runs in them.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => self.scan_tokens(group.stream()),
                TokenTree::Ident(ident) if ident == "crate" || ident == "super" => {
                    let line = ident.span().start().line;
                    let mut segments = vec![ident.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                        (tokens.get(j), tokens.get(j + 1))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        let Some(TokenTree::Ident(next)) = tokens.get(j + 2) else {
                            break;
                        };
                        segments.push(next.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.resolve(&segments, line);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(&prefix.clone(), n.ident.span().start().line);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(&prefix.clone(), r.ident.span().start().line);
                prefix.pop();
            }
            syn::UseTree::Glob(g) => {
                let line = g.star_token.spans[0].start().line;
                self.resolve(&prefix.clone(), line);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.scope.push(item.ident.to_string());
        if is_test_only(&item.attrs) {
            // Tests may use anything; the file, if any, is skipped too.
            self.test_only.insert(self.scope.clone());
        } else {
            syn::visit::visit_item_mod(self, item);
        }
        self.scope.pop();
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.resolve(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// One module's outgoing edges, each with the first place that makes it.
type Graph = BTreeMap<ModPath, BTreeMap<ModPath, Site>>;

/// The module graph of the files under `dir` (the crate's `src/`).
fn module_graph(dir: &Path) -> Graph {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.retain(|f| f.extension().is_some_and(|e| e == "rs"));
    files.retain(|f| f.strip_prefix(dir).unwrap() != Path::new("main.rs"));
    let modules: BTreeSet<ModPath> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(dir).unwrap()))
        .collect();
    let mut parsed = Vec::new();
    let mut test_only = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(dir).unwrap();
        let module = module_of(rel);
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut refs = Refs {
            scope: module.clone(),
            modules: &modules,
            file: format!("src/{}", rel.display()),
            found: BTreeMap::new(),
            test_only: BTreeSet::new(),
        };
        refs.visit_file(&ast);
        test_only.append(&mut refs.test_only);
        parsed.push((rel, module, refs.found));
    }
    let mut graph = Graph::new();
    for (rel, module, found) in parsed {
        if test_only.iter().any(|t| module.starts_with(t)) {
            continue;
        }
        let edges = graph.entry(module.clone()).or_default();
        for (target, site) in found {
            if !module.starts_with(&target) {
                edges.entry(target).or_insert(site);
            }
        }
        // The parent declares this module (`mod x;`): it is compiled with, and
        // re-exports from, its children.
        if let Some((_, parent)) = module.split_last() {
            let site = Site {
                file: format!("src/{}", rel.display()),
                line: 1,
                path: format!("mod {}", module.last().unwrap()),
            };
            let parent = parent.to_vec();
            graph
                .entry(parent)
                .or_default()
                .entry(module.clone())
                .or_insert(site);
        }
    }
    graph
}

/// Tarjan's strongly connected components, only those with more than one
/// module (no edge leads from a module to itself).
fn cyclic_components(graph: &Graph) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn connect<'g>(s: &mut State<'g>, v: &'g ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v) {
            connect(&mut state, v);
        }
    }
    state.out
}

/// The shortest cycle through `start` inside `component` (breadth first).
fn shortest_cycle(graph: &Graph, component: &[ModPath], start: &ModPath) -> Vec<ModPath> {
    let mut parent: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !component.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v.clone()];
                let mut at = v;
                while at != start {
                    at = parent[at];
                    path.push(at.clone());
                }
                path.reverse();
                return path;
            }
            if !parent.contains_key(w) && w != start {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("every module of a strongly connected component is on a cycle")
}

/// Every cycle through each module of every cyclic component, once each,
/// as `a -> b -> a` with the place that makes each edge.
fn describe_cycles(graph: &Graph) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for component in cyclic_components(graph) {
        for start in &component {
            let cycle = shortest_cycle(graph, &component, start);
            // One rotation per cycle: start it at its smallest module.
            let min = cycle.iter().enumerate().min_by_key(|(_, m)| *m).unwrap().0;
            let mut canonical = cycle[min..].to_vec();
            canonical.extend_from_slice(&cycle[..min]);
            if !seen.insert(canonical.clone()) {
                continue;
            }
            let mut names: Vec<String> = canonical.iter().map(|m| show(m)).collect();
            names.push(show(&canonical[0]));
            let mut text = names.join(" -> ");
            for (i, from) in canonical.iter().enumerate() {
                let to = &canonical[(i + 1) % canonical.len()];
                let site = &graph[from][to];
                text.push_str(&format!(
                    "\n    {} -> {}: {}:{} `{}`",
                    show(from),
                    show(to),
                    site.file,
                    site.line,
                    site.path
                ));
            }
            out.push(text);
        }
    }
    out
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph(&src_dir());
    assert!(graph.len() > 10, "the walk found the modules: {graph:?}");
    let cycles = describe_cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles between modules (cut each by moving the shared piece into a leaf module):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn no_file_under_src_is_over_the_limit() {
    let dir = src_dir();
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    let mut over = Vec::new();
    for file in files {
        let rel = format!("src/{}", file.strip_prefix(&dir).unwrap().display());
        let lines = std::fs::read_to_string(&file).map_or(0, |t| t.lines().count());
        if lines > MAX_LINES {
            over.push(format!("{rel}: {lines} lines"));
        }
    }
    over.sort();
    assert!(
        over.is_empty(),
        "files over {MAX_LINES} lines (split them by concern):\n{}",
        over.join("\n")
    );
}

/// The check itself can fail: a scratch crate with a cycle through a `use`,
/// a path in code, a `super::` path and a macro argument is reported, and so
/// is one through a parent's child; a child using its parent is not a cycle.
#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub use a::A;\n");
    write("a/mod.rs", "pub mod inner;\npub struct A;\nuse crate::b::B;\n");
    write(
        "a/inner.rs",
        "use super::A;\npub fn f() -> super::super::c::C { todo!() }\n",
    );
    write(
        "b.rs",
        "pub struct B;\nfn g() { let _ = format!(\"{:?}\", crate::a::inner::f); }\n",
    );
    write(
        "c.rs",
        "pub struct C;\nmod checks { use super::super::b::B; }\n#[cfg(test)]\nmod tests;\n",
    );
    // Test code is not part of the graph: `c::tests -> a` closes no cycle.
    write("c/tests.rs", "use crate::a::A;\n");
    // A cycle through a parent's child: `d` declares `d::x`, which uses `e`,
    // which names `d`.
    write("d/mod.rs", "mod x;\npub struct Y;\n");
    write("d/x.rs", "use crate::e::E;\nuse super::Y;\n");
    write("e.rs", "pub struct E;\npub type F = crate::d::Y;\n");
    let graph = module_graph(dir.path());
    let cycles = describe_cycles(&graph);
    assert_eq!(cycles.len(), 2, "{cycles:#?}");
    assert!(
        cycles[1].starts_with("d -> d::x -> e -> d\n    d -> d::x: src/d/x.rs:1 `mod x`"),
        "{cycles:#?}"
    );
    let lines: Vec<&str> = cycles[0].lines().collect();
    assert_eq!(lines[0], "a::inner -> c -> b -> a::inner", "{cycles:#?}");
    assert_eq!(
        lines[1],
        "    a::inner -> c: src/a/inner.rs:2 `super::super::c::C`"
    );

    // Without the macro edge and the name of `d`: no cycle.
    write("b.rs", "pub struct B;\n");
    write("e.rs", "pub struct E;\n");
    assert!(describe_cycles(&module_graph(dir.path())).is_empty());
}
