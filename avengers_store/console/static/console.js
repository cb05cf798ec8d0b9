// The console's only script: the theme toggle, filters that apply on change, the heatmap's
// sort, and panels (data-refresh="seconds") that refresh in place. Pages work without it.
(function () {
  "use strict";
  var root = document.documentElement;
  var saved = null;
  try { saved = localStorage.getItem("avengers-theme"); } catch (e) { /* storage blocked */ }
  if (saved === "dark" || saved === "light") root.dataset.theme = saved;

  function dark() {
    if (root.dataset.theme) return root.dataset.theme === "dark";
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function sortHeatmap(table, key, button) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    function value(row) {
      if (key === "cluster") return -Number(row.dataset.cluster);
      var cell = row.querySelector('td[data-model="' + CSS.escape(key) + '"]');
      var v = cell && cell.dataset.value !== undefined && cell.dataset.value !== "" ? Number(cell.dataset.value) : -Infinity;
      return v;
    }
    rows.sort(function (a, b) { return value(b) - value(a); });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll("button.sort").forEach(function (b) { b.setAttribute("aria-pressed", b === button ? "true" : "false"); });
  }

  function refresh(panel) {
    if (document.hidden) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(panel.id);
        if (fresh) { panel.innerHTML = fresh.innerHTML; panel.dataset.refreshedAt = String(Date.now()); }
      })
      .catch(function () { /* the next tick tries again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) toggle.addEventListener("click", function () {
      var next = dark() ? "light" : "dark";
      root.dataset.theme = next;
      try { localStorage.setItem("avengers-theme", next); } catch (e) { /* storage blocked */ }
    });
    document.querySelectorAll("select.autosubmit").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
    var heatmap = document.getElementById("heatmap");
    if (heatmap) heatmap.querySelectorAll("button.sort").forEach(function (button) {
      button.addEventListener("click", function () { sortHeatmap(heatmap, button.dataset.sort, button); });
    });
    document.querySelectorAll("[data-refresh]").forEach(function (panel) {
      var seconds = Math.max(5, Number(panel.dataset.refresh) || 15);
      window.setInterval(function () { refresh(panel); }, seconds * 1000);
    });
  });
})();
