// DTQ web UI: keeps the page's live part up to date and sends its buttons.
// Every few seconds the page asks for its own URL again with X-DTQ-Fragment: 1
// and swaps in the HTML fragment the server rendered (escaped there). Buttons
// are forms posted with fetch() and the X-DTQ-UI header the server requires
// of every change (a cross-site form cannot send it); a form with
// data-confirm="..." asks that question first.
"use strict";
(() => {
  const live = document.getElementById("live");
  const status = document.getElementById("status");
  const flash = document.getElementById("flash");
  const toggle = document.getElementById("live-toggle");
  const period = Number(document.body.dataset.refreshMs) || 2000;
  let timer = 0;
  let updates = 0;
  let shown = live ? live.innerHTML : "";

  function say(element, text, kind) {
    element.textContent = text;
    element.dataset.kind = kind;
    element.hidden = false;
  }

  // Leave the page alone while someone selects text in it (to copy a traceback, say).
  function selecting() {
    const selection = window.getSelection();
    return selection !== null && !selection.isCollapsed && live.contains(selection.anchorNode);
  }

  async function refresh() {
    clearTimeout(timer);
    if (live && toggle.checked && !document.hidden && !selecting()) {
      try {
        const response = await fetch(window.location.href, {
          headers: { "X-DTQ-UI": "1", "X-DTQ-Fragment": "1" },
          cache: "no-store",
          signal: AbortSignal.timeout(Math.max(10000, 5 * period)),
        });
        const type = response.headers.get("content-type") || "";
        if (type.startsWith("text/html")) {
          const html = await response.text();
          if (html !== shown) {
            live.innerHTML = html;
            shown = html;
          }
          updates += 1;
          status.dataset.updates = String(updates);
          say(status, "updated " + new Date().toLocaleTimeString(), response.ok ? "ok" : "error");
        } else {
          say(status, "update failed: HTTP " + response.status, "error");
        }
      } catch (error) {
        say(status, "the UI server does not answer", "error");
      }
    }
    timer = setTimeout(refresh, period);
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") {
      return;
    }
    event.preventDefault();
    // Actions on many tasks, or that stop a node, say what they will do and wait for a yes.
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      return;
    }
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => { button.disabled = true; });
    try {
      const response = await fetch(form.action, { method: "POST", headers: { "X-DTQ-UI": "1" } });
      let body;
      try {
        body = await response.json();
      } catch (error) {
        body = { error: "HTTP " + response.status + " " + response.statusText };
      }
      say(flash, body.message || body.error || "HTTP " + response.status, response.ok ? "ok" : "error");
    } catch (error) {
      say(flash, "the UI server does not answer", "error");
    }
    buttons.forEach((button) => { button.disabled = false; });
    refresh();
  });

  if (toggle) {
    toggle.addEventListener("change", refresh);
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) { refresh(); } });
  timer = setTimeout(refresh, period);
})();
