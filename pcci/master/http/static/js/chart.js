// Small history charts: one SVG line over a worker's recent figures.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 120;
const HEIGHT = 28;

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

// A line chart of `values` (nulls are gaps) between `low` and `high`
// (taken from the values when not given), labelled for screen readers.
export function sparkline(values, { low, high, label }) {
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "sparkline",
    role: "img",
    "aria-label": label,
    preserveAspectRatio: "none",
  });
  const known = values.filter((v) => v !== null && v !== undefined);
  if (known.length < 2) return chart;
  const bottom = low ?? Math.min(...known);
  const top = Math.max(high ?? Math.max(...known), bottom + 1e-9);
  const step = WIDTH / (values.length - 1);
  let path = "";
  let drawing = false;
  values.forEach((value, i) => {
    if (value === null || value === undefined) {
      drawing = false;
      return;
    }
    const x = (i * step).toFixed(1);
    const y = (HEIGHT - 1 - ((value - bottom) / (top - bottom)) * (HEIGHT - 2)).toFixed(1);
    path += `${drawing ? "L" : "M"}${x} ${y}`;
    drawing = true;
  });
  chart.append(svg("path", { d: path, class: "line" }));
  return chart;
}
