// The analytics page's charts, drawn with Chart.js (vendor/chartjs) from the figures the
// server put in the page (#analytics-data); the same numbers are in the page's tables.
"use strict";

(function () {
  const source = document.getElementById("analytics-data");
  if (!source || typeof Chart === "undefined") {
    return;
  }
  const data = JSON.parse(source.textContent);
  const common = {
    animation: false, // drawn once, at once: the figures do not change on the page
    maintainAspectRatio: false,
    plugins: { legend: { display: true } },
  };

  new Chart(document.getElementById("chart-per-day"), {
    type: "bar",
    data: {
      labels: data.days,
      datasets: [{ label: "Calls", data: data.per_day, backgroundColor: "#417690" }],
    },
    options: { ...common, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  });

  new Chart(document.getElementById("chart-per-hour"), {
    type: "bar",
    data: {
      labels: data.hours,
      datasets: [{ label: "Calls", data: data.per_hour, backgroundColor: "#79aec8" }],
    },
    options: {
      ...common,
      scales: {
        x: { ticks: { autoSkip: true, maxTicksLimit: 28 } },
        y: { beginAtZero: true, ticks: { precision: 0 } },
      },
    },
  });

  new Chart(document.getElementById("chart-per-agent"), {
    type: "bar",
    data: {
      labels: data.agents,
      datasets: [
        { label: "Containment", data: data.containment, backgroundColor: "#44a340" },
        { label: "Transfer rate", data: data.transfer_rate, backgroundColor: "#e0a526" },
        { label: "Abandonment", data: data.abandonment, backgroundColor: "#ba2121" },
      ],
    },
    options: { ...common, scales: { y: { beginAtZero: true, max: 100 } } },
  });
})();
