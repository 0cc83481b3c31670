// hookbridge dashboard: live updates and buttons that do not reload the page.
// Every page works without this script; it only refreshes parts of a page
// (elements with data-live) and sends forms marked data-live-submit in the
// background. Same origin only; no inline script (the CSP forbids it).
(function () {
  "use strict";
  var PERIOD = 2000;

  function refresh(el) {
    var url = el.getAttribute("data-live");
    if (!url) return Promise.resolve();
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null && html !== el.getAttribute("data-last")) {
          el.setAttribute("data-last", html);
          el.innerHTML = html;
        }
      })
      .catch(function () { /* offline for a moment: try again next tick */ });
  }

  function tick() {
    if (!document.hidden) {
      document.querySelectorAll("[data-live]").forEach(refresh);
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

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.hasAttribute || !form.hasAttribute("data-live-submit")) return;
    e.preventDefault();
    var body = new URLSearchParams(new FormData(form));
    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
      body: body
    })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, body: j }; }); })
      .then(function (res) {
        say(res.body.message || (res.ok ? "Done." : "Refused."));
        document.querySelectorAll("[data-live]").forEach(refresh);
      })
      .catch(function () { say("The request failed; nothing was queued."); });
  });

  // Says the script runs (the browser tests tell the two modes apart by it).
  document.documentElement.setAttribute("data-script", "on");
  document.querySelectorAll("[data-live]").forEach(function (el) {
    el.setAttribute("data-last", el.innerHTML);
  });
  setInterval(tick, PERIOD);
})();
