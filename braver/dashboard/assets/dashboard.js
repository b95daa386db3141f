// braver dashboard: the runs list, one run, comparison and study pages, drawn in the browser.
// No library and nothing fetched from elsewhere: charts are SVG built here. The same code draws
// report.html, where the data is embedded in the page (<script id="braver-data">) instead of
// being polled from the dashboard's /api.
"use strict";

const POLL_MS = 2000;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const BOOKKEEPING = new Set(["epoch", "stage", "time", "lr", "learning_rate", "mom",
                             "momentum", "wd", "rolled_back"]);
const SVG = "http://www.w3.org/2000/svg";
const SCORE = /(dice|sensitivity|specificity|accuracy|loss)$/;  // shown with 4 decimals

// ---------------------------------------------------------------------------------------------
// small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return "nan";
  if (Number.isInteger(value)) return Math.abs(value) >= 10000 ? value.toLocaleString("en") : String(value);
  if (value !== 0 && Math.abs(value) < 1e-3) return value.toExponential(2);
  return Math.abs(value) < 10 ? value.toFixed(4) : value.toLocaleString("en", {maximumFractionDigits: 2});
}

function fmtFraction(value) {
  return isNumber(value) && Number.isInteger(value) && Math.abs(value) < 10 ? value.toFixed(4) : fmt(value);
}

function duration(seconds) {
  if (!isNumber(seconds)) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

function words(name) {
  return name.replace(/_/g, " ");
}

function statusBadge(status) {
  return el("span", {class: `status status-${status}`, text: status});
}

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// the page's data: embedded (report.html) or fetched from the dashboard's API
const EMBEDDED = (() => {
  const node = document.getElementById("braver-data");
  return node ? JSON.parse(node.textContent) : null;
})();

function fileUrl(path, version) {
  if (EMBEDDED) return (EMBEDDED.images || {})[path] || "";
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  return `/files/${encoded}` + (version !== undefined ? `?v=${encodeURIComponent(version)}` : "");
}

// ---------------------------------------------------------------------------------------------
// charts

function tickLabel(value, step) {
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return (Math.abs(value) < step * 1e-6 ? 0 : value).toFixed(decimals);  // no "-0.00"
}

// ticks of a log10 axis spanning [low, high] (in log10 units): decades, or 1-2-5 steps, or
// plain ticks of the values when the range is less than a decade
function logTicks(low, high) {
  if (high - low < 1) {
    const ticks = niceTicks(Math.pow(10, low), Math.pow(10, high));
    const step = ticks.length > 1 ? ticks[1] - ticks[0] : ticks[0];
    return ticks.filter((t) => t > 0).map((t) => ({at: Math.log10(t), label: tickLabel(t, step)}));
  }
  const ticks = [];
  const multiples = high - low <= 2 ? [1, 2, 5] : [1];
  for (let decade = Math.floor(low); decade <= Math.ceil(high); decade++) {
    for (const m of multiples) {
      const at = decade + Math.log10(m);
      if (at >= low - 1e-9 && at <= high + 1e-9) ticks.push({at, label: String(+(m * Math.pow(10, decade)).toPrecision(3))});
    }
  }
  return ticks;
}

function niceTicks(low, high, count = 5) {
  if (!(high > low)) return [low];
  const step0 = (high - low) / count;
  const power = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= step0);
  const ticks = [];
  for (let t = Math.ceil(low / step) * step; t <= high + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

// A line chart: series = [{name, points: [[x, y], …], dashed}], marks = [{x, label, start}]
// (stage boundaries; the first stage's start is labelled without a line). options: title, xLabel, log (y axis), integerX.
function lineChart(series, options = {}) {
  const width = options.width || 430, height = options.height || 250;
  const m = {left: 58, right: 14, top: 26, bottom: 36};
  const all = series.flatMap((s) => s.points).filter(([x, y]) => isNumber(x) && isNumber(y));
  const figure = el("figure", {class: "chart", "data-title": options.title || ""});
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, width, height, class: "chart-svg"});
  figure.append(root);
  root.append(svg("text", {x: m.left, y: 16, class: "chart-title"}, options.title || ""));
  if (!all.length) {
    root.append(svg("text", {x: width / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle"}, "no data yet"));
    return figure;
  }
  const log = options.log && all.every(([, y]) => y > 0);
  const ty = (y) => (log ? Math.log10(y) : y);
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => ty(p[1]))), Math.max(...all.map((p) => ty(p[1])))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 0.5; y0 -= pad; y1 += pad; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const px = (x) => m.left + ((x - x0) / (x1 - x0)) * (width - m.left - m.right);
  const py = (y) => height - m.bottom - ((ty(y) - y0) / (y1 - y0)) * (height - m.top - m.bottom);
  const pyRaw = (v) => height - m.bottom - ((v - y0) / (y1 - y0)) * (height - m.top - m.bottom);

  const axes = svg("g", {class: "axes"});
  const linear = niceTicks(y0, y1);
  const yticks = log ? logTicks(y0, y1)
    : linear.map((t) => ({at: t, label: tickLabel(t, linear.length > 1 ? linear[1] - linear[0] : Math.abs(t) || 1)}));
  for (const {at, label} of yticks) {
    axes.append(svg("line", {x1: m.left, x2: width - m.right, y1: pyRaw(at), y2: pyRaw(at), class: "grid"}));
    axes.append(svg("text", {x: m.left - 6, y: pyRaw(at) + 4, "text-anchor": "end"}, label));
  }
  let xticks = niceTicks(x0, x1, Math.min(8, Math.max(1, Math.round(x1 - x0))));
  if (options.integerX !== false) xticks = xticks.filter((t) => Number.isInteger(t));
  for (const t of xticks) {
    axes.append(svg("line", {x1: px(t), x2: px(t), y1: height - m.bottom, y2: height - m.bottom + 4, class: "tick"}));
    axes.append(svg("text", {x: px(t), y: height - m.bottom + 16, "text-anchor": "middle"}, fmt(t)));
  }
  axes.append(svg("line", {x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom, class: "axis"}));
  axes.append(svg("line", {x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom, class: "axis"}));
  axes.append(svg("text", {x: (m.left + width - m.right) / 2, y: height - 4, "text-anchor": "middle", class: "axis-label"}, options.xLabel || "epoch"));
  root.append(axes);

  for (const mark of options.marks || []) {
    if (mark.x > x1) continue;
    if (mark.x >= x0 && !mark.start) root.append(svg("line", {x1: px(mark.x), x2: px(mark.x), y1: m.top, y2: height - m.bottom, class: "stage-mark"}));
    root.append(svg("text", {x: px(Math.max(mark.x, x0)) + 3, y: m.top + 10, class: "stage-label"}, mark.label));
  }
  const legend = el("figcaption", {class: "legend"});
  series.forEach((s, i) => {
    const colour = s.colour || PALETTE[i % PALETTE.length];
    const points = s.points.filter(([x, y]) => isNumber(x) && isNumber(y));
    const line = svg("polyline", {
      points: points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" "),
      class: "series" + (s.dashed ? " dashed" : ""), stroke: colour, "data-series": s.name,
    });
    root.append(line);
    for (const [x, y] of points) {
      const dot = svg("circle", {cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: 2.6, fill: colour, class: "point"});
      dot.append(svg("title", {}, `${s.name}: ${fmt(y)} (${options.xLabel || "epoch"} ${fmt(x)})`));
      root.append(dot);
    }
    legend.append(el("span", {class: "key"}, el("i", {style: `background:${colour}`}), s.name));
  });
  figure.append(legend);
  return figure;
}

// Grouped bars: one group per label, one bar per series; negative values hang below zero.
function barChart(labels, series, options = {}) {
  const width = options.width || Math.max(420, 70 * labels.length + 100), height = options.height || 260;
  const m = {left: 58, right: 14, top: 26, bottom: 60};
  const values = series.flatMap((s) => s.values).filter(isNumber);
  const figure = el("figure", {class: "chart bar-chart"});
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, width, height, class: "chart-svg"});
  figure.append(root);
  root.append(svg("text", {x: m.left, y: 16, class: "chart-title"}, options.title || ""));
  if (!values.length) return figure;
  let low = Math.min(0, ...values), high = Math.max(0, ...values);
  if (low === high) high = 1;
  [low, high] = [low - (high - low) * 0.06 * (low < 0), high + (high - low) * 0.06 * (high > 0)];
  const py = (v) => height - m.bottom - ((v - low) / (high - low)) * (height - m.top - m.bottom);
  const ticks = niceTicks(low, high);
  for (const t of ticks) {
    root.append(svg("line", {x1: m.left, x2: width - m.right, y1: py(t), y2: py(t), class: "grid"}));
    root.append(svg("text", {x: m.left - 6, y: py(t) + 4, "text-anchor": "end"}, tickLabel(t, ticks.length > 1 ? ticks[1] - ticks[0] : 1)));
  }
  const group = (width - m.left - m.right) / labels.length;
  const bar = (group * 0.8) / Math.max(series.length, 1);
  labels.forEach((label, i) => {
    const gx = m.left + i * group + group * 0.1;
    series.forEach((s, j) => {
      const v = s.values[i];
      if (!isNumber(v)) return;
      const rect = svg("rect", {
        x: gx + j * bar, width: Math.max(bar - 2, 1), y: Math.min(py(v), py(0)),
        height: Math.abs(py(v) - py(0)), fill: PALETTE[j % PALETTE.length], class: "bar",
      });
      rect.append(svg("title", {}, `${label} — ${s.name}: ${fmt(v)}`));
      root.append(rect);
    });
    const text = svg("text", {x: m.left + (i + 0.5) * group, y: height - m.bottom + 14, "text-anchor": "end",
                              transform: `rotate(-25 ${m.left + (i + 0.5) * group} ${height - m.bottom + 14})`}, label);
    root.append(text);
  });
  root.append(svg("line", {x1: m.left, x2: width - m.right, y1: py(0), y2: py(0), class: "axis"}));
  const legend = el("figcaption", {class: "legend"});
  series.forEach((s, j) => legend.append(el("span", {class: "key"}, el("i", {style: `background:${PALETTE[j % PALETTE.length]}`}), s.name)));
  figure.append(legend);
  return figure;
}

// ---------------------------------------------------------------------------------------------
// tables

// A sortable table: columns = [{key, label, format, cell}], sort = {key, ascending}.
function dataTable(columns, rows, options = {}) {
  const state = {key: options.sort?.key, ascending: options.sort?.ascending ?? true};
  // a column with any fraction shows all its numbers as fractions (1 → 1.0000, not 1)
  const fractional = new Set(columns.map((c) => c.key).filter((key) => SCORE.test(key) ||
    rows.some((r) => isNumber(r[key]) && !Number.isInteger(r[key]))));
  const table = el("table", {class: "data", id: options.id});
  const head = el("thead");
  const body = el("tbody");
  table.append(head, body);
  function render() {
    head.replaceChildren(el("tr", {}, columns.map((c) => {
      const arrow = state.key === c.key ? (state.ascending ? " ▲" : " ▼") : "";
      return el("th", {
        "data-key": c.key, class: options.sortable === false ? "" : "sortable",
        onclick: options.sortable === false ? null : () => {
          state.ascending = state.key === c.key ? !state.ascending : true;
          state.key = c.key;
          render();
        },
      }, (c.label ?? words(c.key)) + arrow);
    })));
    let sorted = rows;
    if (state.key) {
      sorted = [...rows].sort((a, b) => {
        const x = a[state.key], y = b[state.key];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return state.ascending ? order : -order;
      });
    }
    body.replaceChildren(...sorted.map((row) => el("tr", options.rowAttrs ? options.rowAttrs(row) : {},
      columns.map((c) => {
        const value = row[c.key];
        const format = c.format || (fractional.has(c.key) ? fmtFraction : fmt);
        const content = c.cell ? c.cell(row) : format(value);
        return el("td", {class: (typeof value === "number" ? "num " : "") + `col-${c.key}`}, content);
      }))));
  }
  render();
  return el("div", {class: "table-box"}, table);  // wide tables scroll, the page does not
}

// ---------------------------------------------------------------------------------------------
// one run: curves, schedules, previews, per-case metrics

function historySeries(history, column) {
  return history.map((row, i) => [i + 1, row[column]]);
}

function stageMarks(history) {
  const marks = [];
  history.forEach((row, i) => {
    if (i === 0 || row.stage !== history[i - 1].stage) marks.push({x: i + 0.5, label: row.stage || "", start: i === 0});
  });
  return marks.length > 1 || (marks.length === 1 && marks[0].label) ? marks : [];
}

function curveGroups(columns, history) {
  const numeric = columns.filter((c) => !BOOKKEEPING.has(c) && history.some((r) => isNumber(r[c])));
  const losses = numeric.filter((c) => c.endsWith("loss"));
  const dice = numeric.filter((c) => !losses.includes(c) && c.includes("dice"));
  const accuracy = numeric.filter((c) => !losses.includes(c) && c.includes("accuracy"));
  const other = numeric.filter((c) => ![...losses, ...dice, ...accuracy].includes(c));
  const groups = [
    {title: "Loss", columns: losses, log: true},
    {title: "Dice (validation patches)", columns: dice},
    {title: "Accuracy", columns: accuracy},
    {title: "Other metrics", columns: other},
    {title: "Learning rate", columns: ["lr", "learning_rate"].filter((c) => columns.includes(c)), log: true},
    {title: "Momentum", columns: ["momentum", "mom"].filter((c) => columns.includes(c))},
    {title: "Seconds per epoch", columns: ["time"].filter((c) => columns.includes(c))},
  ];
  return groups.filter((g) => g.columns.some((c) => history.some((r) => isNumber(r[c]))));
}

function renderCurves(target, details) {
  const marks = stageMarks(details.history);
  const charts = curveGroups(details.columns, details.history).map((group) =>
    lineChart(group.columns.map((c) => ({name: words(c) === "time" ? "seconds" : words(c), points: historySeries(details.history, c), dashed: c.startsWith("train")})),
              {title: group.title, marks, log: group.log}));
  target.replaceChildren(...(charts.length ? charts : [el("p", {class: "muted", text: "No epoch finished yet."})]));
}

function summaryLine(summary) {
  const epoch = summary.epochs ? `${summary.epoch} / ${summary.epochs}` : String(summary.epoch);
  return el("dl", {class: "facts"},
    el("dt", {text: "status"}), el("dd", {}, statusBadge(summary.status)),
    el("dt", {text: "model"}), el("dd", {text: summary.model || "—"}),
    el("dt", {text: "data"}), el("dd", {text: summary.data || "—"}),
    el("dt", {text: "stage"}), el("dd", {class: "stage", text: summary.stage || "—"}),
    el("dt", {text: "epochs"}), el("dd", {class: "epoch", text: epoch}),
    el("dt", {text: "s / epoch"}), el("dd", {text: fmt(summary.seconds_per_epoch)}),
    el("dt", {text: "ETA"}), el("dd", {class: "eta", text: summary.status === "running" ? duration(summary.eta_seconds) : "—"}));
}

function trainableTable(trainable) {
  const rows = Object.entries(trainable || {}).map(([stage, count]) => ({stage, trainable_parameters: count}));
  if (!rows.length) return el("p", {class: "muted", text: "Written when the run finishes."});
  return dataTable([{key: "stage"}, {key: "trainable_parameters", label: "trainable parameters"}], rows, {sortable: false});
}

// Slices of each validation case: truth and prediction over a chosen channel, a slice slider.
class PreviewViewer {
  constructor(runName) {
    this.runName = runName;
    this.node = el("div", {class: "previews", id: "previews"});
    this.index = null;
    this.caseIndex = 0;
    this.sliceIndex = null;
    this.channel = null;
  }

  update(index) {
    const first = this.index === null;
    this.index = index;
    if (!index) {
      this.node.replaceChildren(el("p", {class: "muted", text: "No previews (they appear after the first epoch when the recipe's report.previews is on)."}));
      return;
    }
    if (first || !this.controls) this.build();
    this.show();
  }

  selectCase(caseId) {
    const i = (this.index?.cases || []).findIndex((c) => c.case === caseId);
    if (i < 0) return false;
    this.caseIndex = i;
    this.sliceIndex = null;
    this.build();
    this.show();
    this.node.scrollIntoView({behavior: "smooth", block: "start"});
    return true;
  }

  build() {
    const cases = this.index.cases;
    const current = cases[this.caseIndex] || cases[0];
    this.channel = current.channels.includes(this.channel) ? this.channel : current.display;
    if (this.sliceIndex === null) this.sliceIndex = Math.max(0, current.slices.indexOf(current.main_slice));
    const caseSelect = el("select", {id: "preview-case", onchange: (e) => { this.caseIndex = +e.target.value; this.sliceIndex = null; this.build(); this.show(); }},
      cases.map((c, i) => el("option", {value: i, selected: i === this.caseIndex}, c.case)));
    const channelSelect = el("select", {id: "preview-channel", onchange: (e) => { this.channel = e.target.value; this.show(); }},
      current.channels.map((c) => el("option", {value: c, selected: c === this.channel}, c)));
    this.slider = el("input", {type: "range", id: "slice-slider", min: 0, max: current.slices.length - 1, step: 1, value: this.sliceIndex,
      oninput: (e) => { this.sliceIndex = +e.target.value; this.show(); }});
    this.sliceLabel = el("span", {id: "slice-label"});
    this.truthBox = el("input", {type: "checkbox", id: "show-truth", checked: true, onchange: () => this.show()});
    this.predBox = el("input", {type: "checkbox", id: "show-prediction", checked: true, onchange: () => this.show()});
    this.controls = el("div", {class: "controls"},
      el("label", {}, "case ", caseSelect), el("label", {}, "image ", channelSelect),
      el("label", {}, "slice ", this.slider, " ", this.sliceLabel),
      el("label", {}, this.truthBox, " truth"), el("label", {}, this.predBox, " prediction"));
    const [rows, cols] = current.size;
    const ratio = `${cols} / ${rows * (current.aspect || 1)}`;
    const panel = (id, title) => {
      const base = el("img", {class: "base", id: `${id}-base`, alt: `${title} image`, style: `aspect-ratio:${ratio}`});
      const overlay = el("img", {class: "overlay", id: `${id}-image`, alt: title, style: `aspect-ratio:${ratio}`});
      return [el("div", {class: "panel"}, el("div", {class: "stack"}, base, overlay), el("div", {class: "panel-title", text: title})), base, overlay];
    };
    const [truthPanel, truthBase, truthOverlay] = panel("truth", "truth");
    const [predPanel, predBase, predOverlay] = panel("pred", "prediction");
    Object.assign(this, {truthBase, truthOverlay, predBase, predOverlay});
    this.caption = el("p", {class: "muted", id: "preview-caption"});
    const legend = el("div", {class: "legend"}, (this.index.classes || []).map((c) =>
      el("span", {class: "key"}, el("i", {style: `background:${c.colour}`}), c.name)));
    this.node.replaceChildren(this.controls, el("div", {class: "panels"}, truthPanel, predPanel), legend, this.caption);
  }

  show() {
    const current = this.index.cases[this.caseIndex] || this.index.cases[0];
    const z = current.slices[Math.min(this.sliceIndex, current.slices.length - 1)];
    const folder = `${this.runName}/previews/${current.folder}`;
    const version = this.index.version;
    this.sliceLabel.textContent = `z = ${z} (${this.sliceIndex + 1} of ${current.slices.length})`;
    const base = fileUrl(`${folder}/${this.channel}_z${z}.png`);
    this.truthBase.src = base;
    this.predBase.src = base;
    this.truthOverlay.src = current.truth ? fileUrl(`${folder}/truth_z${z}.png`) : "";
    this.truthOverlay.style.visibility = this.truthBox.checked && current.truth ? "visible" : "hidden";
    this.predOverlay.src = fileUrl(`${folder}/pred_z${z}.png`, version);
    this.predOverlay.dataset.version = version;
    this.predOverlay.style.visibility = this.predBox.checked ? "visible" : "hidden";
    const when = this.index.updated ? new Date(this.index.updated * 1000).toLocaleTimeString() : "";
    this.caption.textContent = `Prediction after ${this.index.stage} epoch ${this.index.epoch + 1} (${when}); ` +
      `${this.channel} shown, rows drawn anterior up.`;
  }
}

function caseMetricsTable(metrics, viewer) {
  const cases = metrics?.cases || [];
  if (!cases.length) return el("p", {class: "muted", text: "Whole-volume metrics are written when the run finishes (metrics.json)."});
  const keys = [...new Set(cases.flatMap((row) => Object.keys(row)))].filter((k) => k !== "case");
  const dice = keys.find((k) => k.endsWith("_dice"));
  const previewed = new Set((viewer.index?.cases || []).map((c) => c.case));
  const columns = [{key: "case", cell: (row) => previewed.has(row.case)
      ? el("a", {href: `#case=${encodeURIComponent(row.case)}`, class: "case-link",
                 onclick: (e) => { e.preventDefault(); viewer.selectCase(row.case); }}, row.case)
      : el("span", {title: "no preview slices for this case"}, row.case)},
    ...keys.map((k) => ({key: k}))];
  const means = Object.entries(metrics.summary || {}).filter(([k]) => k.endsWith("_dice"))
    .map(([k, v]) => `${words(k)} ${fmtFraction(v.mean)}`);
  return el("div", {},
    means.length ? el("p", {id: "case-means"}, "Mean over the cases: ", el("strong", {text: means.join(" · ")})) : null,
    dataTable(columns, cases, {id: "case-metrics", sort: {key: dice, ascending: true}}),
    el("p", {class: "muted", text: "Sorted worst first by " + words(dice || "case") + "; click a heading to sort, a case to see its slices."}));
}

async function runPage(app, runName) {
  const header = el("header", {}, el("h1", {}, el("a", {href: "/", class: "home", text: "runs"}), " / ", runName));
  if (EMBEDDED) header.replaceChildren(el("h1", {text: `braver run ${runName}`}));
  const facts = el("div", {id: "facts"});
  const curves = el("div", {id: "curves", class: "charts"});
  const trainable = el("div", {id: "trainable"});
  const viewer = new PreviewViewer(runName);
  const caseMetrics = el("div", {id: "case-metrics-box"});
  const studies = el("div", {id: "run-studies"});
  const files = el("p", {id: "run-files"});
  app.replaceChildren(header, facts,
    el("section", {}, el("h2", {text: "Curves"}), curves),
    el("section", {}, el("h2", {text: "Trainable parameters per stage"}), trainable),
    el("section", {}, el("h2", {text: "Validation slices"}), viewer.node),
    el("section", {}, el("h2", {text: "Whole-volume metrics per case"}), caseMetrics),
    el("section", {}, el("h2", {text: "Surgery studies of this run"}), studies),
    files);
  let version = null;
  let previewVersion = null;
  async function refresh() {
    const details = EMBEDDED ? EMBEDDED.run : await getJSON(`/api/run/${encodeURIComponent(runName)}`);
    document.title = `${runName} · ${details.summary.status}`;
    facts.replaceChildren(summaryLine(details.summary));
    if (details.summary.version === version) return;
    version = details.summary.version;
    renderCurves(curves, details);
    trainable.replaceChildren(trainableTable(details.trainable_parameters));
    const pv = details.previews ? details.previews.version : null;
    if (pv !== previewVersion || !viewer.index) { previewVersion = pv; viewer.update(details.previews); }
    caseMetrics.replaceChildren(caseMetricsTable(details.metrics, viewer));
    studies.replaceChildren(details.studies.length
      ? el("ul", {}, details.studies.map((s) => el("li", {},
          EMBEDDED ? s.name : el("a", {href: `/study/${runName}/${s.name}`}, s.name), ` — ${s.rows} variants`)))
      : el("p", {class: "muted", text: "None (braver prune writes them)."}));
    if (!EMBEDDED) {
      files.replaceChildren("Files: ", ...details.files.flatMap((f) => [el("a", {href: fileUrl(`${runName}/${f}`)}, f), " "]));
    }
    const hash = decodeURIComponent(location.hash || "");
    if (hash.startsWith("#case=")) viewer.selectCase(hash.slice(6));
  }
  await refresh();
  if (!EMBEDDED) setInterval(() => refresh().catch(() => {}), POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// the runs list

async function runsPage(app) {
  const selected = new Set();
  const runsBox = el("div", {id: "runs"});
  const compare = el("button", {id: "compare-button", disabled: true, onclick: () => {
    location.href = "/compare?runs=" + [...selected].map(encodeURIComponent).join(",");
  }}, "Compare selected runs");
  const studiesBox = el("div", {id: "studies"});
  const rootLine = el("p", {class: "muted", id: "root"});
  app.replaceChildren(el("header", {}, el("h1", {text: "braver runs"}), rootLine),
    el("section", {}, runsBox, compare),
    el("section", {}, el("h2", {text: "Studies"}), studiesBox));
  async function refresh() {
    const data = await getJSON("/api/overview");
    rootLine.textContent = `${data.root} · updated ${new Date(data.now * 1000).toLocaleTimeString()}`;
    if (!data.runs.length) {
      runsBox.replaceChildren(el("p", {class: "muted", text: "No run folder yet: start one with braver train."}));
    } else {
      const metricKeys = [...new Set(data.runs.flatMap((r) => Object.keys(r.best)))];
      const bestKeys = ["valid_loss", ...metricKeys.filter((k) => k.includes("dice") || k.includes("accuracy"))].filter((k) => metricKeys.includes(k));
      const finalKeys = [...new Set(data.runs.flatMap((r) => Object.keys(r.final)))];
      const rows = data.runs.map((r) => ({...r, ...Object.fromEntries(bestKeys.map((k) => [`best_${k}`, r.best[k]])),
        ...Object.fromEntries(finalKeys.map((k) => [`final_${k}`, r.final[k]]))}));
      const columns = [
        {key: "select", label: "", cell: (r) => el("input", {type: "checkbox", class: "pick", checked: selected.has(r.name),
          onchange: (e) => { e.target.checked ? selected.add(r.name) : selected.delete(r.name); compare.disabled = selected.size < 2; }})},
        {key: "name", label: "run", cell: (r) => el("a", {href: `/run/${encodeURIComponent(r.name)}`, class: "run-link"}, r.name)},
        {key: "status", cell: (r) => statusBadge(r.status)},
        {key: "recipe"}, {key: "model"}, {key: "data"}, {key: "stage"},
        {key: "epoch", cell: (r) => r.epochs ? `${r.epoch} / ${r.epochs}` : String(r.epoch)},
        {key: "eta_seconds", label: "ETA", cell: (r) => r.status === "running" ? duration(r.eta_seconds) : "—"},
        ...bestKeys.map((k) => ({key: `best_${k}`, label: `best ${words(k)}`})),
        ...finalKeys.map((k) => ({key: `final_${k}`, label: `volume ${words(k)}`})),
      ];
      runsBox.replaceChildren(dataTable(columns, rows, {id: "runs-table", rowAttrs: (r) => ({"data-run": r.name, class: `run-${r.status}`})}));
    }
    studiesBox.replaceChildren(data.studies.length
      ? dataTable([{key: "kind"}, {key: "name", label: "study", cell: (s) => el("a", {href: `/study/${s.path}`}, s.path)},
                   {key: "source", label: "network"}, {key: "rows"}], data.studies, {id: "studies-table"})
      : el("p", {class: "muted", text: "No transfer (braver transfer) or surgery (braver prune) study yet."}));
  }
  await refresh();
  setInterval(() => refresh().catch(() => {}), POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// comparison of runs

async function comparePage(app, names) {
  const chartBox = el("div", {id: "compare-charts", class: "charts"});
  const tableBox = el("div", {id: "compare-table"});
  const select = el("select", {id: "compare-metric"});
  app.replaceChildren(el("header", {}, el("h1", {}, el("a", {href: "/", class: "home", text: "runs"}), " / comparison")),
    el("p", {}, el("label", {}, "metric ", select)), chartBox, tableBox);
  let chosen = null;
  async function refresh() {
    const data = await getJSON("/api/compare?runs=" + names.map(encodeURIComponent).join(","));
    const columns = [...new Set(data.runs.flatMap((r) => r.columns))].filter((c) => !["stage", "epoch"].includes(c));
    if (!chosen) chosen = columns.includes("valid_loss") ? "valid_loss" : columns[0];
    select.replaceChildren(...columns.map((c) => el("option", {value: c, selected: c === chosen}, words(c))));
    select.onchange = () => { chosen = select.value; draw(); };
    function draw() {
      const series = data.runs.map((r) => ({name: r.name, points: historySeries(r.history, chosen)}));
      const dice = columns.filter((c) => c.endsWith("dice"));
      const second = dice.find((c) => c !== chosen);
      chartBox.replaceChildren(lineChart(series, {title: words(chosen), width: 620, height: 300, log: chosen.endsWith("loss")}),
        ...(second ? [lineChart(data.runs.map((r) => ({name: r.name, points: historySeries(r.history, second)})), {title: words(second), width: 620, height: 300})] : []));
    }
    draw();
    const rows = data.runs.map((r) => ({run: r.name, status: r.summary.status, model: r.summary.model, epochs: r.summary.epoch,
      seconds_per_epoch: r.summary.seconds_per_epoch,
      ...Object.fromEntries(Object.entries(r.summary.best).map(([k, v]) => [`best_${k}`, v])),
      ...Object.fromEntries(Object.entries(r.summary.final).map(([k, v]) => [`volume_${k}`, v]))}));
    const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
    tableBox.replaceChildren(dataTable(keys.map((k) => ({key: k})), rows, {id: "compare-summary"}));
  }
  await refresh();
}

// ---------------------------------------------------------------------------------------------
// a transfer or surgery study

async function studyPage(app, path) {
  const data = await getJSON(`/api/study/${path.split("/").map(encodeURIComponent).join("/")}`);
  const title = data.kind === "transfer" ? "Transfer study" : "Surgery study";
  const meta = el("dl", {class: "facts"}, Object.entries(data.meta)
    .filter(([, v]) => v !== null && typeof v !== "object")
    .flatMap(([k, v]) => [el("dt", {text: words(k)}), el("dd", {text: fmt(v)})]));
  const columns = data.columns.map((key) => ({key, cell: key.startsWith("delta_") ? (row) => {
    const v = row[key];
    return el("span", {class: isNumber(v) ? (v < -5e-5 ? "worse" : v > 5e-5 ? "better" : "") : ""}, isNumber(v) ? (v > 0 ? "+" : "") + fmtFraction(v) : "—");
  } : null}));
  const labels = data.rows.map((r) => String(r[data.label]));
  const chart = barChart(labels, data.chart.map((c) => ({name: words(c), values: data.rows.map((r) => r[c])})),
    {title: data.kind === "transfer" ? "Dice and accuracy per setup" : "Δ Dice against the intact network"});
  app.replaceChildren(el("header", {}, el("h1", {}, el("a", {href: "/", class: "home", text: "runs"}), ` / ${title.toLowerCase()} ${data.name}`)),
    meta, dataTable(columns, data.rows, {id: "study-table"}), chart);
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const app = document.getElementById("app");
  const page = app.dataset.page;
  try {
    if (page === "run") await runPage(app, app.dataset.run);
    else if (page === "compare") await comparePage(app, (new URLSearchParams(location.search).get("runs") || "").split(",").filter(Boolean));
    else if (page === "study") await studyPage(app, app.dataset.study);
    else await runsPage(app);
  } catch (error) {
    app.append(el("p", {class: "error", text: String(error)}));
  }
}

document.addEventListener("DOMContentLoaded", main);
