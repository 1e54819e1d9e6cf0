/* exp site: the index's sorting, filtering and selection; a record's chart; the compare page.
 * No dependencies, no requests: data comes from the pages and from r/VERSION.data.js files
 * beside them. Text from records is set with textContent only, never parsed as HTML. */
(function () {
  "use strict";
  var VERSION = /^\d+\.\d+\.\d+$/;
  var RECORDS = window.EXP_RECORDS = window.EXP_RECORDS || {};

  function el(name, parent, text, cls) {
    var e = document.createElement(name);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function fmt(v) { return window.ExpChart ? window.ExpChart.format(v) : String(v); }
  function shown(v) { return v === null || v === undefined ? "—" : (typeof v === "number" ? fmt(v) : (typeof v === "object" ? JSON.stringify(v) : String(v))); }
  function ready() { window.EXP_READY_AT = performance.now(); document.documentElement.setAttribute("data-ready", "1"); }

  // -- index ------------------------------------------------------------------------------------
  // The rows come as JSON (pages.index_json): built here as the template once wrote them, text by textContent.
  function indexRows(table) {
    var holder = document.getElementById("index-data"), out = [];
    if (!holder) { return Array.prototype.slice.call(table.tBodies[0].rows); }
    var data = JSON.parse(holder.textContent), f = {};
    data.fields.forEach(function (name, i) { f[name] = i; });
    function cell(tr, text, sortValue, cls) {
      var td = el("td", tr, text, cls);
      if (sortValue !== undefined) { td.setAttribute("data-v", sortValue); }
      return td;
    }
    function star(parent) { var s = el("span", null, "★", "best"); s.title = data.t.best; parent.appendChild(document.createTextNode(" ")); parent.appendChild(s); }
    data.rows.forEach(function (r) {
      var v = r[f.version], tr = el("tr");
      out.push(tr);
      tr.setAttribute("data-status", r[f.status]); tr.setAttribute("data-task", r[f.task]); tr.setAttribute("data-text", r[f.search]);
      tr.id = "row-" + v;
      var box = el("input", el("td", tr), null, "pick");
      box.type = "checkbox"; box.value = v; box.setAttribute("aria-label", data.t.pick + " " + v);
      var td = cell(tr, null, r[f.order]), a = el("a", td, v);
      a.href = "r/" + v + ".html";
      if (r[f.best]) { star(td); }
      if (r[f.members]) {  // a group's parent: its members folded under it, this button unfolds them
        var fold = el("button", td, "▸ " + r[f.members] + " " + data.t.fold, "fold");
        fold.type = "button"; fold.setAttribute("data-group", v); fold.setAttribute("aria-expanded", "false");
        td.insertBefore(document.createTextNode(" "), fold);
      }
      if (r[f.group]) { tr.setAttribute("data-group", r[f.group]); tr.className = "member"; }
      cell(tr, r[f.task]);
      el("span", cell(tr), r[f.status], "st st-" + r[f.status]);
      td = cell(tr, r[f.description], undefined, "desc");
      if (r[f.swept]) { td.appendChild(document.createTextNode(" ")); el("code", td, r[f.swept], "swept"); }
      td = cell(tr, null, r[f.parent_order]);
      if (r[f.parent_link]) { a = el("a", td, r[f.parent]); a.href = "r/" + r[f.parent] + ".html"; } else { td.textContent = r[f.parent] || "—"; }
      r[f.metrics].forEach(function (m) { cell(tr, m[0], m[1], "num"); });
      td = cell(tr, null, r[f.verdict_sort]);
      var vd = r[f.verdicts];
      if (vd) { el("span", td, "✓ " + vd[0], "b ok"); el("span", td, "✗ " + vd[1], "b no"); el("span", td, "? " + vd[2], "b q"); } else { td.textContent = "—"; }
      cell(tr, r[f.review]);
      cell(tr, r[f.date].slice(0, 10) || "—", r[f.date]);
    });
    return out;
  }

  // Every row is built, but only the first PAGE of those shown are in the table until the reader
  // scrolls to its end (or presses "more"): laying out a thousand rows took the browser longer
  // than everything else on the page. Filtering and sorting work on all of them.
  var PAGE = 150;
  function index(table) {
    var rows = indexRows(table), body = table.tBodies[0], limit = PAGE, folded = {};
    rows.forEach(function (r) { var b = r.querySelector("button.fold"); if (b) { folded[b.getAttribute("data-group")] = true; } });
    function grouped() {  // each group's members right under their parent, in the order the table has them
      var kids = {}, out = [];
      rows.forEach(function (r) { var g = r.getAttribute("data-group"); if (g && folded.hasOwnProperty(g)) { (kids[g] = kids[g] || []).push(r); } });
      rows.forEach(function (r) {
        var g = r.getAttribute("data-group");
        if (g && folded.hasOwnProperty(g)) { return; }
        out.push(r);
        (kids[r.id.slice(4)] || []).forEach(function (k) { out.push(k); });
      });
      return out;
    }
    var q = document.getElementById("q"), fs = document.getElementById("f-status"), ft = document.getElementById("f-task");
    var count = document.getElementById("shown"), button = document.getElementById("compare"), more = document.getElementById("more");
    function attach() {
      var frag = document.createDocumentFragment(), n = 0;
      grouped().forEach(function (r) { if (!r.hidden) { if (n < limit) { frag.appendChild(r); } else if (r.parentNode) { r.parentNode.removeChild(r); } n++; } });
      body.textContent = "";
      body.appendChild(frag);
      if (more) { more.hidden = n <= limit; }
    }
    function filter() {
      var text = q.value.trim().toLowerCase(), st = fs.value, task = ft.value, n = 0;
      rows.forEach(function (r) {
        var g = r.getAttribute("data-group");
        var ok = (!st || r.getAttribute("data-status") === st) && (!task || r.getAttribute("data-task") === task) &&
          (!text || r.getAttribute("data-text").indexOf(text) >= 0) && !(g && folded[g] && !text && !st && !task);
        r.hidden = !ok;
        if (ok) { n++; }
      });
      count.textContent = n;
      attach();
    }
    function showMore() { limit += PAGE * 4; attach(); }
    if (more) {
      more.addEventListener("click", showMore);
      if (window.IntersectionObserver) {
        new IntersectionObserver(function (seen) { if (seen[0].isIntersecting && !more.hidden) { showMore(); } }, {rootMargin: "600px"}).observe(more);
      }
    }
    [q, fs, ft].forEach(function (c) { c.addEventListener("input", filter); c.addEventListener("change", filter); });
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      if (!th.hasAttribute("data-sort")) { return; }
      function sort() {
        var asc = !th.classList.contains("asc"), num = th.getAttribute("data-sort") === "num";
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        function key(r) {
          var c = r.cells[col], v = c.hasAttribute("data-v") ? c.getAttribute("data-v") : c.textContent;
          if (num) { var f = parseFloat(v); return isNaN(f) ? null : f; }
          return v;
        }
        var keyed = rows.map(function (r, i) { return [key(r), i, r]; });
        keyed.sort(function (a, b) {
          if (a[0] === b[0]) { return a[1] - b[1]; }
          if (a[0] === null || a[0] === "") { return 1; }  // missing values last, either way
          if (b[0] === null || b[0] === "") { return -1; }
          return (a[0] < b[0] ? -1 : 1) * (asc ? 1 : -1);
        });
        rows = keyed.map(function (k) { return k[2]; });
        attach();
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { sort(); } });
    });
    function picked() {  // every row, in the table now or not
      return rows.map(function (r) { return r.querySelector("input.pick"); }).filter(function (b) { return b.checked; }).map(function (b) { return b.value; });
    }
    body.addEventListener("change", function () { button.disabled = picked().length < 2; });
    body.addEventListener("click", function (ev) {
      var b = ev.target.closest ? ev.target.closest("button.fold") : null;
      if (!b) { return; }
      var g = b.getAttribute("data-group");
      folded[g] = !folded[g];
      b.setAttribute("aria-expanded", folded[g] ? "false" : "true");
      b.textContent = (folded[g] ? "▸ " : "▾ ") + b.textContent.slice(2);
      filter();
    });
    button.addEventListener("click", function () { window.location.href = "compare.html?v=" + picked().map(encodeURIComponent).join(","); });
    filter();
    ready();
  }

  // -- a record's chart ------------------------------------------------------------------------------
  function runSeries(d, label, opts) {
    var c = d.curves || {}, out = [];
    if (c.step && c.step.length) { out.push({label: label + "loss", x: c.step, y: c.loss}); }
    if (c.val_step && c.val_step.length) { out.push({label: label + "val_loss", x: c.val_step, y: c.val_loss, dash: true, markers: true}); }
    Object.keys(c.series || {}).forEach(function (name) {  // another task's curves (accuracy, F1, a declared metric)
      var s = c.series[name];
      out.push({label: label + name, x: s.x, y: s.y, right: true, markers: s.x.length <= 50});
    });
    if (opts.lr && c.lr) { out.push({label: "lr", x: c.step, y: c.lr, right: true, hidden: !!c.series}); }
    if (opts.lr && c.grad_norm) { out.push({label: "grad_norm", x: c.step, y: c.grad_norm, right: true, hidden: true}); }
    return out;
  }
  function record(host) {
    var d = RECORDS[host.getAttribute("data-version")];
    if (d && window.ExpChart) { window.ExpChart.draw(host, {series: runSeries(d, "", {lr: true}), xlabel: "step", reset: d.strings.reset}); }
    ready();
  }

  // -- compare ----------------------------------------------------------------------------------------
  function table(parent, head, rows) {
    var t = el("table", parent), tr = el("tr", el("thead", t)), tb = el("tbody", t);
    head.forEach(function (h) { el("th", tr, h); });
    rows.forEach(function (r) { var row = el("tr", tb); r.forEach(function (c, i) { el(i ? "td" : "th", row, c, i ? "num" : ""); }); });
    return t;
  }
  function compare(out) {
    var t = JSON.parse(out.getAttribute("data-t"));
    var m = /[?&]v=([^&#]*)/.exec(window.location.search);
    var versions = m ? decodeURIComponent(m[1]).split(",").filter(function (v) { return VERSION.test(v); }) : [];
    versions = versions.filter(function (v, i) { return versions.indexOf(v) === i; });
    var hint = document.getElementById("hint");
    if (versions.length < 2) { out.hidden = true; ready(); return; }
    hint.hidden = true;
    var left = versions.length, missing = [];
    versions.forEach(function (v) {
      var s = document.createElement("script");
      s.src = "r/" + v + ".data.js";
      s.onload = s.onerror = function () { if (!RECORDS[v]) { missing.push(v); } if (--left === 0) { draw(); } };
      document.body.appendChild(s);
    });
    function draw() {
      var have = versions.filter(function (v) { return RECORDS[v]; });
      var labels = document.getElementById("labels");
      have.forEach(function (v, i) { if (i) { labels.appendChild(document.createTextNode(" · ")); } var a = el("a", labels, v); a.href = "r/" + v + ".html"; });
      if (missing.length) { el("p", out, t.missing + " " + missing.join(", "), "error"); }
      if (have.length < 1) { ready(); return; }
      // the keys whose values differ (comparison.compare's config_diff), in the first record's order
      var keys = [];
      have.forEach(function (v) { Object.keys(RECORDS[v].config || {}).forEach(function (k) { if (keys.indexOf(k) < 0) { keys.push(k); } }); });
      var diff = keys.filter(function (k) {
        var first = JSON.stringify((RECORDS[have[0]].config || {})[k]);
        return have.some(function (v) { return JSON.stringify((RECORDS[v].config || {})[k]) !== first; });
      });
      var cd = document.getElementById("config-diff");
      if (diff.length) { table(cd, [t.key].concat(have), diff.map(function (k) { return [k].concat(have.map(function (v) { return shown((RECORDS[v].config || {})[k]); })); })); }
      else { el("p", cd, t.same_config, "note"); }
      // metric deltas against the first (comparison.metric_deltas: value − reference, and relative)
      var ref = RECORDS[have[0]].metrics || {}, names = [];
      have.forEach(function (v) { Object.keys(RECORDS[v].metrics || {}).forEach(function (k) { if (names.indexOf(k) < 0 && typeof RECORDS[v].metrics[k] === "number") { names.push(k); } }); });
      var order = t.summary_keys;
      names.sort(function (a, b) { var ia = order.indexOf(a), ib = order.indexOf(b); return (ia < 0 ? order.length : ia) - (ib < 0 ? order.length : ib); });
      var head = [t.metric, have[0]];
      have.slice(1).forEach(function (v) { head.push(v, "Δ", "Δ%"); });
      var md = document.getElementById("metric-deltas");
      var mt = table(md, head, names.map(function (k) {
        var row = [k, shown(ref[k])];
        have.slice(1).forEach(function (v) {
          var x = (RECORDS[v].metrics || {})[k], r = ref[k], ok = typeof x === "number" && typeof r === "number";
          row.push(shown(x), ok ? (x - r >= 0 ? "+" : "") + fmt(x - r) : "—", ok && r !== 0 ? ((x - r) / Math.abs(r) * 100 >= 0 ? "+" : "") + ((x - r) / Math.abs(r) * 100).toFixed(2) + "%" : "—");
        });
        return row;
      }));
      mt.id = "metric-table";
      var series = [];
      have.forEach(function (v) { series = series.concat(runSeries(RECORDS[v], v + " ", {lr: false})); });
      if (window.ExpChart && series.length) { window.ExpChart.draw(document.getElementById("chart"), {series: series, xlabel: "step", reset: t.reset}); }
      ready();
    }
  }

  // -- a group: the swept value against a metric, mean ± CI per point ------------------------------------
  function group(holder) {
    var data = JSON.parse(holder.textContent), host = document.getElementById("group-chart");
    var key = document.getElementById("g-key"), metric = document.getElementById("g-metric");
    if (!host || !key || !metric || !window.ExpChart) { ready(); return; }
    function draw() {
      var k = key.value, m = metric.value;
      var pts = data.points.filter(function (p) { var x = p.x[k]; return x !== null && x !== undefined && p.stats[m] && isFinite(p.stats[m].mean); });
      var numeric = pts.every(function (p) { return typeof p.x[k] === "number"; }), xs, ticks = null;
      if (numeric) {
        pts.sort(function (a, b) { return a.x[k] - b.x[k]; });
        var lo = pts.length ? pts[0].x[k] : 0, hi = pts.length ? pts[pts.length - 1].x[k] : 0, log = lo > 0 && hi / lo >= 20;
        xs = pts.map(function (p) { return log ? Math.log10(p.x[k]) : p.x[k]; });
        if (log) { ticks = pts.map(function (p, i) { return {at: xs[i], label: fmt(p.x[k])}; }); }
      } else {  // categories, in the members' order
        xs = pts.map(function (p, i) { return i; });
        ticks = pts.map(function (p, i) { return {at: i, label: String(p.x[k])}; });
      }
      var series = [{label: m, x: xs, y: pts.map(function (p) { return p.stats[m].mean; }),
                     err: pts.map(function (p) { return p.stats[m].ci; }), markers: true}];
      window.ExpChart.draw(host, {series: series, xlabel: k, xticks: ticks, reset: data.t.reset});
      host.setAttribute("data-versions", pts.map(function (p) { return p.version; }).join(","));
    }
    key.addEventListener("change", draw);
    metric.addEventListener("change", draw);
    draw();
    ready();
  }

  function start() {
    var idx = document.getElementById("records"), chart = document.querySelector(".record #chart"), cmp = document.getElementById("compare-out");
    var grp = document.getElementById("group-data");
    if (idx) { index(idx); } else if (chart) { record(chart); } else if (cmp) { compare(cmp); } else if (grp) { group(grp); } else { ready(); }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
}());
