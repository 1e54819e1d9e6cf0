/* exp site's line chart: SVG, no dependencies (written for expkit, MIT like the rest of it).
 * ExpChart.draw(element, {series: [{label, x: [...], y: [...], err: [...], right: bool, dash: bool, markers: bool}], xlabel, xticks: [{at, label}]})
 * ``err``: each point's half-width, drawn as an error bar (y ± err); ``xticks``: the x axis's ticks
 * and their labels instead of round numbers (a swept value on a log or category axis).
 * Hover shows the step and each visible series' value; drag across the plot to zoom, "reset" to
 * undo; the legend's check boxes toggle series. Values are set with textContent only: labels
 * come from records and are never parsed as HTML. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var W = 800, H = 340, M = {l: 62, r: 62, t: 12, b: 34};

  function svg(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function html(name, parent, text) {
    var e = document.createElement(name);
    if (text !== undefined) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) { return "—"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) { return v.toExponential(3).replace(/\.?0+e/, "e"); }
    return String(+v.toPrecision(5));
  }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var raw = (hi - lo) / n, p = Math.pow(10, Math.floor(Math.log10(raw))), out = [];
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * p; }).filter(function (s) { return s >= raw; })[0];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(+v.toPrecision(12)); }
    return out;
  }
  function extent(series, axisRight, x0, x1) {
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) {
      if (s.hidden || !!s.right !== axisRight) { return; }
      for (var i = 0; i < s.x.length; i++) {
        var y = s.y[i], e = s.err && isFinite(s.err[i]) && s.err[i] > 0 ? s.err[i] : 0;
        if (s.x[i] < x0 || s.x[i] > x1 || y === null || !isFinite(y)) { continue; }
        if (y - e < lo) { lo = y - e; } if (y + e > hi) { hi = y + e; }
      }
    });
    if (lo === Infinity) { return null; }
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }
  function nearest(xs, x) {  // index of the value in sorted xs closest to x
    var lo = 0, hi = xs.length - 1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < x) { lo = mid; } else { hi = mid; } }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }

  function Chart(host, spec) {
    var self = this;
    this.spec = spec;
    this.series = spec.series.filter(function (s) { return s.x && s.x.length; });
    this.series.forEach(function (s, i) { s.color = s.color || PALETTE[i % PALETTE.length]; s.hidden = !!s.hidden; });
    var all = [];
    this.series.forEach(function (s) { all = all.concat([s.x[0], s.x[s.x.length - 1]]); });
    this.full = [Math.min.apply(null, all), Math.max.apply(null, all)];
    if (this.full[0] === this.full[1]) { this.full[1] += 1; }
    this.view = this.full.slice();
    host.textContent = "";
    var bar = html("div", host); bar.className = "bar";
    this.series.forEach(function (s) {
      var lab = html("label", bar), box = html("input", lab), sw = html("span", lab);
      box.type = "checkbox"; box.checked = !s.hidden; sw.className = "swatch"; sw.style.background = s.color;
      html("span", lab, s.label + (s.right ? " (→)" : ""));
      box.addEventListener("change", function () { s.hidden = !box.checked; self.draw(); });
    });
    var reset = html("button", bar, spec.reset || "reset zoom"); reset.type = "button"; reset.className = "reset";
    reset.addEventListener("click", function () { self.view = self.full.slice(); self.draw(); });
    this.root = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img"}, host);
    this.tip = html("div", host); this.tip.className = "tip";
    this.draw();
    var drag = null, sel = null;
    function dataX(ev) {
      var box = self.root.getBoundingClientRect(), px = (ev.clientX - box.left) * W / box.width;
      return {px: Math.max(M.l, Math.min(W - M.r, px)), x: self.view[0] + (Math.max(M.l, Math.min(W - M.r, px)) - M.l) / (W - M.l - M.r) * (self.view[1] - self.view[0])};
    }
    this.root.addEventListener("pointerdown", function (ev) {
      drag = dataX(ev);
      sel = svg("rect", {x: drag.px, y: M.t, width: 0, height: H - M.t - M.b, fill: "rgba(31,111,235,.12)", "class": "sel"}, self.root);
    });
    this.root.addEventListener("pointermove", function (ev) {
      var at = dataX(ev);
      if (drag && sel) { sel.setAttribute("x", Math.min(drag.px, at.px)); sel.setAttribute("width", Math.abs(at.px - drag.px)); }
      self.hover(at, ev);
    });
    this.root.addEventListener("pointerup", function (ev) {
      var at = dataX(ev);
      if (drag && Math.abs(at.px - drag.px) > 6) { self.view = [Math.min(drag.x, at.x), Math.max(drag.x, at.x)]; }
      drag = null; sel = null; self.draw();
    });
    this.root.addEventListener("pointerleave", function () { self.tip.style.display = "none"; if (self.cursor) { self.cursor.setAttribute("visibility", "hidden"); } });
  }

  Chart.prototype.draw = function () {
    var self = this, g = this.root, x0 = this.view[0], x1 = this.view[1];
    while (g.firstChild) { g.removeChild(g.firstChild); }
    var left = extent(this.series, false, x0, x1), right = extent(this.series, true, x0, x1);
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    function sx(x) { return M.l + (x - x0) / (x1 - x0) * pw; }
    function sy(y, ax) { return M.t + (1 - (y - ax[0]) / (ax[1] - ax[0])) * ph; }
    (this.spec.xticks || ticks(x0, x1, 6).map(function (v) { return {at: v, label: fmt(v)}; })).forEach(function (tk) {
      if (tk.at < x0 || tk.at > x1) { return; }
      svg("line", {x1: sx(tk.at), x2: sx(tk.at), y1: M.t, y2: M.t + ph, stroke: "#eee"}, g);
      svg("text", {x: sx(tk.at), y: H - M.b + 16, "text-anchor": "middle"}, g).textContent = tk.label;
    });
    [[left, M.l - 6, "end"], [right, W - M.r + 6, "start"]].forEach(function (a) {
      if (!a[0]) { return; }
      ticks(a[0][0], a[0][1], 5).forEach(function (v) {
        if (v < a[0][0] || v > a[0][1]) { return; }
        if (a[0] === left) { svg("line", {x1: M.l, x2: M.l + pw, y1: sy(v, left), y2: sy(v, left), stroke: "#eee"}, g); }
        svg("text", {x: a[1], y: sy(v, a[0]) + 4, "text-anchor": a[2]}, g).textContent = fmt(v);
      });
    });
    svg("rect", {x: M.l, y: M.t, width: pw, height: ph, fill: "none", stroke: "#999"}, g);
    svg("text", {x: M.l + pw / 2, y: H - 4, "text-anchor": "middle"}, g).textContent = this.spec.xlabel || "step";
    var clip = "clip" + Math.random().toString(36).slice(2);
    svg("rect", {x: M.l, y: M.t, width: pw, height: ph}, svg("clipPath", {id: clip}, svg("defs", {}, g)));
    var drawn = 0, bars = 0;
    this.series.forEach(function (s) {
      var ax = s.right ? right : left;
      if (s.hidden || !ax) { return; }
      var pts = [], flush = function () {
        if (pts.length) {
          var line = svg("polyline", {points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": s.right ? 1.2 : 1.6, "clip-path": "url(#" + clip + ")", "class": "series"}, g);
          if (s.dash) { line.setAttribute("stroke-dasharray", "5 4"); }
          if (pts.length === 1 || s.markers) { pts.forEach(function (p) { var c = p.split(","); svg("circle", {cx: c[0], cy: c[1], r: 2.5, fill: s.color, "clip-path": "url(#" + clip + ")"}, g); }); }
          pts = [];
        }
      };
      for (var i = 0; i < s.x.length; i++) {
        var y = s.y[i];
        if (y === null || !isFinite(y)) { flush(); continue; }
        if (s.x[i] < x0 - (x1 - x0) || s.x[i] > x1 + (x1 - x0)) { continue; }
        pts.push(sx(s.x[i]).toFixed(1) + "," + sy(y, ax).toFixed(1));
        drawn++;
        var e = s.err ? s.err[i] : null;
        if (e !== null && e !== undefined && isFinite(e) && e > 0) {  // the interval: a bar with caps
          var bx = sx(s.x[i]), top = sy(y + e, ax), bottom = sy(y - e, ax), attrs = {stroke: s.color, "stroke-width": 1.2, "clip-path": "url(#" + clip + ")"};
          svg("path", Object.assign({d: "M" + bx + " " + top + "V" + bottom + "M" + (bx - 4) + " " + top + "h8M" + (bx - 4) + " " + bottom + "h8",
                                     fill: "none", "class": "errbar"}, attrs), g);
          bars++;
        }
      }
      flush();
    });
    this.root.setAttribute("data-points", drawn);
    this.root.setAttribute("data-errbars", bars);
    this.cursor = svg("line", {y1: M.t, y2: M.t + ph, stroke: "#888", "stroke-dasharray": "2 2", visibility: "hidden"}, g);
    this.sx = sx;
  };

  Chart.prototype.hover = function (at, ev) {
    var lines = [], step = null, self = this;
    this.series.forEach(function (s) {
      if (s.hidden) { return; }
      var i = nearest(s.x, at.x);
      if (step === null || Math.abs(s.x[i] - at.x) < Math.abs(step - at.x)) { step = s.x[i]; }
      var e = s.err && isFinite(s.err[i]) && s.err[i] > 0 ? " ± " + fmt(s.err[i]) : "";
      lines.push(s.label + ": " + fmt(s.y[i]) + e + (s.x[i] !== step ? " (" + (self.spec.xlabel || "step") + " " + s.x[i] + ")" : ""));
    });
    if (step === null) { return; }
    var label = step, named = (this.spec.xticks || []).filter(function (tk) { return tk.at === step; });
    if (named.length) { label = named[0].label; }
    this.tip.textContent = (this.spec.xlabel || "step") + " " + label + "\n" + lines.join("\n");
    this.tip.style.display = "block";
    var box = this.root.getBoundingClientRect(), host = this.root.parentNode.getBoundingClientRect();
    this.tip.style.left = Math.min(ev.clientX - host.left + 12, host.width - 160) + "px";
    this.tip.style.top = (box.top - host.top + 14) + "px";
    this.cursor.setAttribute("x1", this.sx(step)); this.cursor.setAttribute("x2", this.sx(step));
    this.cursor.setAttribute("visibility", "visible");
  };

  window.ExpChart = {draw: function (host, spec) { return new Chart(host, spec); }, format: fmt};
}());
