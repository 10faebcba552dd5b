// The toolkit's dashboard pages (launcher/pages.py): actions by POST, the page refreshed in place while
// the Autorefresh switch is on, and the Overview's charts and queue table from overview.json. Values are
// only ever written as text (textContent, uPlot's labels), never as markup.
"use strict";

(function () {
  var poll = Number(document.body.dataset.poll) || 2500;
  var autorefresh = document.getElementById("autorefresh-switch");
  var notice = document.getElementById("notice");
  var overview = document.querySelector("[data-overview]");
  var COLORS = ["#4682b4", "#2e8b57", "#b8860b", "#6a5acd", "#008b8b", "#8b4513", "#c71585", "#556b2f"];
  var FAILED = "#c0392b";
  var LINES = 8;  // groups drawn at most: the busiest 7, then all others as one

  function say(text, ok) {
    notice.textContent = text;
    notice.className = "alert " + (ok ? "alert-success" : "alert-danger");
  }

  function span(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " days";
  }

  // While an action or a refresh is in flight, <body data-busy>: the timed refresh waits its turn (two
  // never overlap), and a test knows when the rows are where they will stay.
  var inFlight = 0;
  function busy(promise) {
    inFlight += 1;
    document.body.dataset.busy = "";
    return promise.finally(function () {
      inFlight -= 1;
      if (!inFlight) delete document.body.dataset.busy;
    });
  }

  // A refresh puts what it fetched in place only if the page is as it began: no action begun since (it
  // would bring back the rows from before the action) and no pointer pressed (the press's element would
  // go, and its click with it). A skipped refresh is made good by the next one.
  var actions = 0;
  var pressed = false;
  document.addEventListener("pointerdown", function () { pressed = true; }, true);
  ["pointerup", "pointercancel"].forEach(function (type) {
    document.addEventListener(type, function () { pressed = false; }, true);
  });

  // Actions: a button with data-post (and data-field-NAME values to send) asks, then POSTs.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-post]");
    if (!button || !window.confirm(button.dataset.confirm)) return;
    actions += 1;
    var form = new URLSearchParams();
    Object.keys(button.dataset).forEach(function (key) {
      if (key.indexOf("field") === 0 && key.length > 5) form.append(key.slice(5).toLowerCase(), button.dataset[key]);
    });
    button.disabled = true;
    busy(fetch(button.dataset.post, { method: "POST", body: form, credentials: "same-origin" })
      .then(function (response) {
        var plain = (response.headers.get("Content-Type") || "").indexOf("text/plain") === 0;
        return response.text().then(function (text) {
          say(plain ? text.trim() : response.status + " " + response.statusText, response.ok);
        });
      })
      .catch(function (error) { say(String(error), false); })
      .then(function () { button.disabled = false; return refresh(); }));
  });

  // Tags: the search box goes to ?tag=... (the CSP allows no form submission).
  var tag = document.getElementById("tag");
  function search() { window.location.assign(tag.dataset.search + "?tag=" + encodeURIComponent(tag.value.trim())); }
  if (tag) {
    document.getElementById("search").addEventListener("click", search);
    tag.addEventListener("keydown", function (event) { if (event.key === "Enter") search(); });
  }

  // Every other page: its server-rendered part fetched again and put in place if it changed (a list of
  // tags isn't refreshed).
  function reload(still) {
    if (!document.getElementById("page").hasAttribute("data-refresh")) return Promise.resolve();
    if (document.activeElement && document.activeElement.tagName === "INPUT") return Promise.resolve();
    return fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { if (!response.ok) throw new Error(response.status); return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("page");
        var shown = document.getElementById("page");
        if (!fresh || !still() || fresh.innerHTML === shown.innerHTML) return;
        shown.replaceChildren(...Array.from(fresh.childNodes, function (node) { return document.importNode(node, true); }));
      });
  }

  // The Overview.
  var charts = {};
  var split = document.getElementById("split");
  var latest = null;

  function grouped(period, by) {
    // One "processed" and one "failed" line per group (all jobs, a queue, a job type).
    var groups = {};
    period.runs.forEach(function (run) {
      var key = by === "total" ? "all jobs" : run[by];
      var group = groups[key] || (groups[key] = { processed: period.times.map(function () { return 0; }), failed: period.times.map(function () { return 0; }) });
      run.counts.forEach(function (count, i) {
        group.processed[i] += count;
        if (run.outcome === "failed") group.failed[i] += count;
      });
    });
    if (by === "total" && !groups["all jobs"]) groups["all jobs"] = { processed: period.times.map(function () { return 0; }), failed: period.times.map(function () { return 0; }) };
    var names = Object.keys(groups).sort();
    if (names.length > LINES) {  // the busiest groups, and the rest as one
      var total = function (name) { return groups[name].processed.reduce(function (a, b) { return a + b; }, 0); };
      names.sort(function (a, b) { return total(b) - total(a); });
      var rest = { processed: period.times.map(function () { return 0; }), failed: period.times.map(function () { return 0; }) };
      names.slice(LINES - 1).forEach(function (name) {
        groups[name].processed.forEach(function (count, i) { rest.processed[i] += count; rest.failed[i] += groups[name].failed[i]; });
      });
      names = names.slice(0, LINES - 1).sort();
      groups["(others)"] = rest;
      names.push("(others)");
    }
    var series = [{}];
    var data = [period.times];
    names.forEach(function (name, i) {
      var color = COLORS[i % COLORS.length];
      var prefix = by === "total" ? "" : name + ": ";
      series.push({ label: prefix + "processed", stroke: color, width: 1.5 });
      series.push({ label: prefix + "failed", stroke: by === "total" ? FAILED : color, dash: [6, 4], width: 1.5 });
      data.push(groups[name].processed, groups[name].failed);
    });
    return { series: series, data: data, key: names.join("\u0000") };
  }

  function draw(name, period) {
    var element = document.getElementById("chart-" + name);
    var shape = grouped(period, split.value);
    var chart = charts[name];
    if (chart && chart.key === shape.key) {
      chart.plot.setData(shape.data);
      return;
    }
    if (chart) chart.plot.destroy();
    var options = {
      width: Math.max(element.clientWidth, 300),
      height: 220,
      series: shape.series,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(max, 1)]; } } },
      axes: [{}, { label: name === "minute" ? "jobs / minute" : "jobs / hour" }],
    };
    charts[name] = { key: shape.key, plot: new uPlot(options, shape.data, element) };
  }

  function queueRow(queue) {
    var row = document.createElement("tr");
    row.dataset.queue = queue.name;
    var link = document.createElement("a");
    link.href = overview.dataset.jobs + encodeURIComponent(queue.name) + "/queued/8/asc/1";
    link.textContent = queue.name;
    var cells = [link, queue.queued, span(queue.latency), queue.started, queue.scheduled, queue.deferred, queue.failed, queue.finished];
    cells.forEach(function (value) {
      var cell = document.createElement("td");
      if (value instanceof Node) cell.appendChild(value); else cell.textContent = String(value);
      row.appendChild(cell);
    });
    return row;
  }

  function show(data) {
    latest = data;
    draw("minute", data.minute);
    draw("hour", data.hour);
    var body = overview.querySelector("tbody");
    body.replaceChildren(...data.queues.map(queueRow));
  }

  function load(still) {
    return fetch(overview.dataset.overview, { credentials: "same-origin" })
      .then(function (response) { if (!response.ok) throw new Error("overview.json: " + response.status); return response.json(); })
      .then(function (data) { if (still()) show(data); });
  }

  if (overview) {
    split.addEventListener("change", function () { if (latest) show(latest); });
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (name) {
        var element = document.getElementById("chart-" + name);
        charts[name].plot.setSize({ width: Math.max(element.clientWidth, 300), height: 220 });
      });
    });
  }

  function refresh() {
    var begun = actions;
    function still() { return begun === actions && !pressed; }
    return busy((overview ? load(still) : reload(still)).catch(function (error) { say("Refresh failed: " + error.message, false); }));
  }
  if (overview) refresh();

  function tick() {
    var wait = overview ? poll : Math.max(poll, 10000);
    window.setTimeout(function () {
      (inFlight || (autorefresh && !autorefresh.checked) ? Promise.resolve() : refresh()).then(tick);
    }, wait);
  }
  tick();
})();
