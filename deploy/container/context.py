#!/usr/bin/env python3
"""Lay out what the container's build stage sees, to build it without Docker.

Applies .dockerignore to the repository the way Docker forms a build context
(later patterns win, `!` re-includes, a pattern also matches a path's parent
directories), then replays the build stage's COPY instructions into a new
directory, which it prints. `cargo build --locked --release` run there is the
build stage's RUN: if it passes, the image's build passes.

Usage: python3 deploy/container/context.py [REPO [OUT]] > path-of-the-copy
(OUT, when given, is emptied first; by default a new temporary directory.)
"""

import fnmatch
import os
import re
import shlex
import shutil
import sys
import tempfile


def ignore_patterns(repo):
    patterns = []
    path = os.path.join(repo, ".dockerignore")
    if not os.path.exists(path):
        return patterns
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((pattern, negate))
    return patterns


def matches(pattern, path):
    # A pattern matches the path itself or any directory above it.
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if fnmatch.fnmatchcase(prefix, pattern) or (
            "**" in pattern and fnmatch.fnmatchcase(prefix, pattern.replace("**/", "*"))
        ):
            return True
    return False


def included(patterns, rel):
    verdict = True
    for pattern, negate in patterns:
        if matches(pattern, rel):
            verdict = negate
    return verdict


def context_files(repo):
    patterns = ignore_patterns(repo)
    files = set()
    for root, dirs, names in os.walk(repo):
        # Skip walking a directory that is ignored and that no `!` pattern
        # could reach into (the repository's .git and target, typically).
        def reachable(d):
            rel = os.path.relpath(os.path.join(root, d), repo)
            return included(patterns, rel) or any(
                negate and (p == rel or p.startswith(rel + "/")) for p, negate in patterns
            )
        dirs[:] = [d for d in dirs if reachable(d)]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), repo)
            if included(patterns, rel):
                files.add(rel)
    return files


def build_stage_copies(repo):
    """(sources, destination) of each COPY in the first stage, without --from."""
    with open(os.path.join(repo, "deploy/container/Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    copies, froms, workdir = [], 0, "/"
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        op = words[0].upper()
        if op == "FROM":
            froms += 1
            if froms > 1:
                break
        elif op == "WORKDIR":
            workdir = os.path.join(workdir, words[1])
        elif op in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if any(w.startswith("--from") for w in words[1:]):
                continue
            dest = args[-1]
            into_dir = dest.endswith("/") or dest in (".", "./")
            copies.append((args[:-1], (os.path.normpath(os.path.join(workdir, dest)), into_dir)))
    return workdir, copies


def main():
    repo = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = context_files(repo)
    workdir, copies = build_stage_copies(repo)
    if len(sys.argv) > 2:
        out = os.path.abspath(sys.argv[2])
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
    else:
        out = tempfile.mkdtemp(prefix="hookbridge-build-context-")
    for sources, (dest, into_dir) in copies:
        for source in sources:
            source = os.path.normpath(source)
            is_dir = os.path.isdir(os.path.join(repo, source))
            chosen = sorted(f for f in files if f == source or f.startswith(source + "/"))
            if not chosen:
                sys.exit(f"COPY {source}: not in the build context (see .dockerignore)")
            for rel in chosen:
                if is_dir:
                    # A directory's contents go into the destination.
                    target = os.path.join(dest, os.path.relpath(rel, source))
                elif into_dir or len(sources) > 1:
                    target = os.path.join(dest, os.path.basename(rel))
                else:
                    target = dest
                target = os.path.join(out, os.path.relpath(target, "/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(os.path.join(repo, rel), target)
    print(os.path.join(out, os.path.relpath(workdir, "/")))


if __name__ == "__main__":
    main()
