// hookbridge dashboard: live updates and buttons that do not reload the page.
// Every page works without this script; it only refreshes parts of a page
// (elements with data-live) and sends forms marked data-live-submit in the
// background. Same origin only; no inline script (the CSP forbids it).
(function () {
  "use strict";
  var PERIOD = 2000;
  var ended = false;

  // An element's HTML as this browser writes it back: the server's text
  // and the page's copy of it compare equal when nothing changed.
  function serialized(el, html) {
    var fresh = document.createElement(el.tagName);
    fresh.innerHTML = html;
    return fresh.innerHTML;
  }

  // What the user was doing inside `el`: the sections they opened, and the
  // element with the keyboard focus, so a refresh keeps both.
  function state(el) {
    var active = document.activeElement;
    var focus = null;
    if (active && active !== el && el.contains(active)) {
      focus = active.id ? "#" + CSS.escape(active.id)
        : active.getAttribute("href") ? "[href=\"" + CSS.escape(active.getAttribute("href")) + "\"]"
        : null;
    }
    var open = [];
    el.querySelectorAll("details[id]").forEach(function (d) {
      if (d.open) open.push(d.id);
    });
    return { focus: focus, open: open };
  }

  function restore(el, s) {
    s.open.forEach(function (id) {
      var d = document.getElementById(id);
      if (d) d.open = true;
    });
    if (s.focus) {
      var f = el.querySelector(s.focus);
      if (f) f.focus();
    }
  }

  function say(text) {
    var box = document.getElementById("live-status");
    if (!box) {
      box = document.createElement("p");
      box.id = "live-status";
      box.className = "notice";
      box.setAttribute("role", "status");
      var main = document.getElementById("main");
      main.insertBefore(box, main.children[1] || null);
    }
    box.textContent = text;
  }

  function refresh(el) {
    var url = el.getAttribute("data-live");
    if (!url || ended) return Promise.resolve();
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) {
          ended = true;
          say("Your session has ended: reload the page to log in again.");
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        var fresh = serialized(el, html);
        if (fresh === el.hookbridgeLast) return;
        var s = state(el);
        el.innerHTML = html;
        el.hookbridgeLast = fresh;
        restore(el, s);
      })
      .catch(function () { /* offline for a moment: try again next tick */ });
  }

  function tick() {
    if (!document.hidden) {
      document.querySelectorAll("[data-live]").forEach(refresh);
    }
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.hasAttribute || !form.hasAttribute("data-live-submit")) return;
    e.preventDefault();
    var button = form.querySelector("button");
    if (button) {
      if (button.disabled) return;
      button.disabled = true;
    }
    var done = function () { if (button) button.disabled = false; };
    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
      body: new URLSearchParams(new FormData(form))
    })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, body: j }; }); })
      .then(function (res) {
        say(res.body.message || (res.ok ? "Done." : "Refused."));
        done();
        document.querySelectorAll("[data-live]").forEach(refresh);
      })
      .catch(function () { done(); say("The request failed; nothing was queued."); });
  });

  // Says the script runs (the browser tests tell the two modes apart by it).
  document.documentElement.setAttribute("data-script", "on");
  document.querySelectorAll("[data-live]").forEach(function (el) {
    el.hookbridgeLast = el.innerHTML;
  });
  setInterval(tick, PERIOD);
})();
