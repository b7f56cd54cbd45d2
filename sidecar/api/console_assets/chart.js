// The usage chart: requests and 429s per UTC day, an inline SVG built with DOM calls.
import { el, plural, svg } from "./dom.js";

const WIDTH = 720;
const HEIGHT = 220;
const PAD = { top: 16, right: 12, bottom: 28, left: 44 };

// A round, even number at or above `value`, for the top of the scale (2, 4, 6, 8, 10, 12...).
function ceiling(value) {
  if (value <= 10) return Math.max(2, 2 * Math.ceil(value / 2));
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 1.2, 1.6, 2, 3, 4, 5, 6, 8, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

export function usageChart(usage) {
  const days = usage.days || [];
  const top = ceiling(Math.max(0, ...days.map((day) => day.requests)));
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotWidth / Math.max(days.length, 1);
  const barWidth = Math.max(1, slot * 0.7);
  const y = (count) => PAD.top + plotHeight - (count / top) * plotHeight;
  const limited = days.reduce((sum, day) => sum + day.rate_limited, 0);
  const summary = `${plural(usage.total_requests, "request", "requests")} and ${plural(
    limited, "rate-limited request (429)", "rate-limited requests (429)")} in ${plural(days.length, "day", "days")}`;

  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "usage",
    role: "img",
    "aria-label": `Requests per day: ${summary}`,
  });
  chart.append(svg("title", {}, `Requests per day: ${summary}`));
  for (const fraction of [0, 0.5, 1]) {
    const level = y(top * fraction);
    chart.append(
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: level, y2: level, class: "grid" }),
      svg("text", { x: PAD.left - 6, y: level + 4, class: "axis", "text-anchor": "end" },
        String(Math.round(top * fraction))),
    );
  }
  days.forEach((day, index) => {
    const x = PAD.left + index * slot + (slot - barWidth) / 2;
    const label = `${day.date}: ${plural(day.requests, "request", "requests")}, ${day.rate_limited} rate limited`;
    const group = svg("g", {
      class: "day",
      "data-date": day.date,
      "data-requests": day.requests,
      "data-rate-limited": day.rate_limited,
    });
    group.append(
      svg("rect", { x, width: barWidth, y: y(day.requests), height: y(0) - y(day.requests), class: "requests" }),
      svg("rect", { x, width: barWidth, y: y(day.rate_limited), height: y(0) - y(day.rate_limited), class: "limited" }),
      svg("title", {}, label),
    );
    chart.append(group);
  });
  if (days.length) {
    chart.append(
      svg("text", { x: PAD.left, y: HEIGHT - 8, class: "axis" }, days[0].date),
      svg("text", { x: WIDTH - PAD.right, y: HEIGHT - 8, class: "axis", "text-anchor": "end" },
        days[days.length - 1].date),
    );
  }

  const legend = el("p", { class: "legend" },
    el("span", { class: "swatch requests", "aria-hidden": "true" }), " Requests ",
    el("span", { class: "swatch limited", "aria-hidden": "true" }), " Rate limited (429)",
    el("span", { class: "total" }, ` · ${summary}`));
  return el("figure", { class: "usage-figure" }, chart, legend, dataTable(days));
}

// The same numbers as a table, for screen readers and for copying.
function dataTable(days) {
  const body = el("tbody", {}, days.map((day) =>
    el("tr", {}, el("td", {}, day.date), el("td", {}, String(day.requests)), el("td", {}, String(day.rate_limited)))));
  return el("details", {},
    el("summary", {}, "Show as a table"),
    el("table", { class: "keys" },
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Day (UTC)"), el("th", { scope: "col" }, "Requests"),
        el("th", { scope: "col" }, "Rate limited"))),
      body));
}
