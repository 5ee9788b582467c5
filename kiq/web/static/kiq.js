// kiq web: confirmations, "select all", and the dashboard's live chart. No library; every page
// works without this script except the live chart and the confirmations.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
  for (const all of document.querySelectorAll("input.select-all")) {
    all.addEventListener("change", () => {
      for (const box of all.closest("form").querySelectorAll("input[name=key]")) box.checked = all.checked;
    });
  }
  const live = document.getElementById("live");
  if (live) poll(live);
});

function poll(svg) {
  const width = 760, height = 150, keep = 60;
  const rates = { processed: [], failed: [] };
  let last = null;
  const tick = async () => {
    let now;
    try {
      const reply = await fetch(svg.dataset.src, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!reply.ok) return;
      now = await reply.json();
    } catch (error) {
      return;  // Redis or the dashboard is away for a moment: try again at the next tick
    }
    for (const [name, value] of Object.entries(now)) {
      for (const element of document.querySelectorAll(`[data-stat="${name}"]`)) {
        element.textContent = value.toLocaleString();
      }
    }
    if (last) {
      const seconds = Math.max(0.001, now.time - last.time);
      for (const name of ["processed", "failed"]) {
        const rate = Math.max(0, (now[name] - last[name]) / seconds);
        rates[name].push(rate);
        if (rates[name].length > keep) rates[name].shift();
        document.querySelector(`[data-rate="${name}"]`).textContent = rate.toFixed(1);
      }
      const peak = Math.max(1, ...rates.processed, ...rates.failed);
      for (const name of ["processed", "failed"]) {
        const points = rates[name].map((rate, i) =>
          `${(i * width / (keep - 1)).toFixed(1)},${(height - rate * (height - 20) / peak).toFixed(1)}`);
        document.getElementById(`live-${name}`).setAttribute("points", points.join(" "));
      }
      document.getElementById("live-peak").textContent = `${peak.toFixed(1)}/s`;
    }
    last = now;
  };
  tick();
  setInterval(tick, Number(svg.dataset.interval) || 2000);
}
