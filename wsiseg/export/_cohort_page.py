"""The inline style and script of ``cohort.html`` (kept apart so the page builder stays readable).

The script only moves existing nodes (table rows and gallery cards); it never builds HTML from data.
"""

from __future__ import annotations

__all__ = ["PAGE_CSS", "PAGE_JS"]

PAGE_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 22px 0 6px; }
.note { color: #555; margin: 2px 0 8px; }
#summary { color: #333; }
#gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure.card { margin: 0; width: 200px; border: 1px solid #ccc; border-radius: 4px; padding: 6px; background: #fafafa; }
figure.card img { display: block; max-width: 100%; max-height: 150px; margin: 0 auto; }
figure.card.failed { background: #fdecea; border-color: #e0a39b; }
figure.card figcaption { font-size: 12px; margin-top: 4px; overflow-wrap: break-word; }
.missing { height: 120px; display: flex; align-items: center; justify-content: center; color: #a33;
  font-size: 12px; text-align: center; overflow: hidden; overflow-wrap: anywhere; }
.qc { color: #a15c00; }
.legend span { margin-right: 12px; } .legend svg { vertical-align: -1px; }
#tsr-histogram .bar { fill: #4a78b5; } #tsr-histogram .bar:hover { fill: #2d5690; }
#tsr-histogram .axis { stroke: #333; } #tsr-histogram .threshold { stroke: #c33; stroke-dasharray: 4 3; }
#tsr-histogram text { font-size: 11px; fill: #333; } #tsr-histogram .tick, #tsr-histogram .count,
#tsr-histogram .label { text-anchor: middle; }
.scroll { overflow-x: auto; max-width: 100%; }
table#cohort { border-collapse: collapse; font-size: 12px; }
#cohort th, #cohort td { border: 1px solid #ddd; padding: 3px 6px; }
#cohort td { white-space: nowrap; } #cohort td.num { text-align: right; }
#cohort td.wrap { white-space: normal; overflow-wrap: break-word; min-width: 90px; max-width: 260px; }
#cohort th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0; cursor: pointer; }
#cohort th[aria-sort="ascending"] button::after { content: " \\25B2"; }
#cohort th[aria-sort="descending"] button::after { content: " \\25BC"; }
#cohort tr.failed td { background: #fdecea; }
#cohort tbody tr:nth-child(even) td { background-color: #f6f6f6; }
"""

PAGE_JS = """
(function () {
  "use strict";
  var table = document.getElementById("cohort");
  var gallery = document.getElementById("gallery");
  if (!table) { return; }
  var tbody = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  function value(row, col, numeric) {
    var v = row.cells[col].getAttribute("data-v");
    if (v === null || v === "") { return null; }
    return numeric ? parseFloat(v) : v.toLowerCase();
  }
  function sortBy(col) {
    var th = headers[col];
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (var k = 0; k < headers.length; k++) { headers[k].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = value(a, col, numeric), y = value(b, col, numeric);
      if (x === null || y === null) {
        if (x === null && y === null) { return a.dataset.i - b.dataset.i; }
        return x === null ? 1 : -1;  /* empty cells last, in both directions */
      }
      var c = numeric ? x - y : x.localeCompare(y);
      return c !== 0 ? dir * c : a.dataset.i - b.dataset.i;
    });
    var cards = {};
    if (gallery) {
      Array.prototype.forEach.call(gallery.children, function (card) { cards[card.dataset.i] = card; });
    }
    rows.forEach(function (row) {
      tbody.appendChild(row);
      if (cards[row.dataset.i]) { gallery.appendChild(cards[row.dataset.i]); }
    });
  }
  Array.prototype.forEach.call(headers, function (th, col) {
    th.querySelector("button").addEventListener("click", function () { sortBy(col); });
  });
})();
"""
