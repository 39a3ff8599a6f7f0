// Small SVG charts for the studio: line charts (curves, overlays) and bar charts
// (histograms). No library: nothing to upgrade, nothing fetched.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2557a7", "#c2410c", "#15803d", "#7e22ce", "#be123c", "#0e7490", "#a16207"];
const PAD = { left: 62, right: 10, top: 8, bottom: 26 };

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, value);
  return element;
}

// a tick label precise enough to tell the ticks of an axis spanning `span` apart
function niceNumber(value, span) {
  if (value === 0) return "0";
  const size = Math.abs(value);
  if (size < 1e-3 || size >= 1e6) return value.toExponential(1);
  const decimals = Math.max(0, Math.min(6, Math.ceil(-Math.log10((span || size) / 4))));
  return value.toFixed(decimals);
}

function extent(values) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (!isFinite(low) || !isFinite(high)) return [0, 1];
  if (low === high) { low -= Math.abs(low) * 0.1 || 0.5; high += Math.abs(high) * 0.1 || 0.5; }
  return [low, high];
}

// series: [{name, points: [[x, y], ...]}]; draws into `container`, replacing what was there
function lineChart(container, series, options) {
  const width = 600;
  const height = 200;
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  const points = series.flatMap((s) => s.points).filter((p) => p[1] !== null && isFinite(p[1]));
  svg.setAttribute("data-points", String(points.length));
  container.replaceChildren(svg);
  if (points.length === 0) {
    const empty = svgElement("text", { x: width / 2, y: height / 2, "text-anchor": "middle", fill: "#66707c" });
    empty.textContent = (options && options.empty) || "no points yet";
    svg.appendChild(empty);
    return;
  }
  const [x0, x1] = extent(points.map((p) => p[0]));
  const [y0, y1] = extent(points.map((p) => p[1]));
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (width - PAD.left - PAD.right);
  const sy = (y) => height - PAD.bottom - ((y - y0) / (y1 - y0)) * (height - PAD.top - PAD.bottom);
  drawAxes(svg, sx, sy, [x0, x1], [y0, y1], width, height, options || {});
  series.forEach((one, index) => {
    const shown = one.points.filter((p) => p[1] !== null && isFinite(p[1]));
    const color = COLORS[index % COLORS.length];
    const path = shown.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
    svg.appendChild(svgElement("path", { d: path.join(" "), fill: "none", stroke: color, "stroke-width": 1.6 }));
    if (shown.length < 30) {
      for (const p of shown) svg.appendChild(svgElement("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color }));
    }
  });
}

function drawAxes(svg, sx, sy, xs, ys, width, height, options) {
  const axis = { stroke: "#9aa3ad", "stroke-width": 1 };
  svg.appendChild(svgElement("line", { x1: PAD.left, y1: height - PAD.bottom, x2: width - PAD.right, y2: height - PAD.bottom, ...axis }));
  svg.appendChild(svgElement("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: height - PAD.bottom, ...axis }));
  const label = (text, attributes) => {
    const element = svgElement("text", { "font-size": 11, fill: "#66707c", ...attributes });
    element.textContent = text;
    svg.appendChild(element);
  };
  for (const y of [ys[0], (ys[0] + ys[1]) / 2, ys[1]]) label(niceNumber(y, ys[1] - ys[0]), { x: PAD.left - 4, y: sy(y) + 4, "text-anchor": "end" });
  const whole = Number.isInteger(xs[0]) && Number.isInteger(xs[1]);
  for (const x of [xs[0], xs[1]]) label(whole ? String(x) : niceNumber(x, xs[1] - xs[0]), { x: sx(x), y: height - 8, "text-anchor": "middle" });
  if (options.xLabel) label(options.xLabel, { x: (width + PAD.left) / 2, y: height - 8, "text-anchor": "middle" });
}

// counts per bin between edges (a histogram)
function barChart(container, counts, edges) {
  const width = 600;
  const height = 200;
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  svg.setAttribute("data-bars", String(counts.length));
  container.replaceChildren(svg);
  const top = Math.max(1, ...counts);
  const barWidth = (width - PAD.left - PAD.right) / Math.max(1, counts.length);
  counts.forEach((count, index) => {
    const barHeight = (count / top) * (height - PAD.top - PAD.bottom);
    const bar = svgElement("rect", {
      x: PAD.left + index * barWidth + 1, y: height - PAD.bottom - barHeight,
      width: Math.max(1, barWidth - 2), height: barHeight, fill: COLORS[0],
    });
    const tip = svgElement("title");
    tip.textContent = `${edges[index]}–${edges[index + 1]} tokens: ${count} rows`;
    bar.appendChild(tip);
    svg.appendChild(bar);
  });
  const sx = (x) => PAD.left + ((x - edges[0]) / ((edges[edges.length - 1] - edges[0]) || 1)) * (width - PAD.left - PAD.right);
  const sy = (y) => height - PAD.bottom - (y / top) * (height - PAD.top - PAD.bottom);
  drawAxes(svg, sx, sy, [edges[0], edges[edges.length - 1]], [0, top], width, height, {});
}

window.charts = { lineChart, barChart, COLORS };
