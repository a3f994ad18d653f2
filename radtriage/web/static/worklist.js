/* Worklist: asks the server for the current list every few seconds (with the page's filters) and redraws the
   rows, highlighting studies that were not there before. Stops polling once the session has ended. */
"use strict";
(function () {
  var table = document.getElementById("worklist");
  if (!table) { return; }
  var body = document.getElementById("worklist-rows");
  var empty = document.getElementById("worklist-empty");
  var total = document.getElementById("worklist-total");
  var updated = document.getElementById("worklist-updated");
  var interval = parseInt(table.dataset.pollMs, 10) || 4000;
  var known = new Set(Array.prototype.map.call(body.rows, function (r) { return r.dataset.id; }));
  var timer = null;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function rowFor(row) {
    var tr = el("tr", "prio-row-" + row.priority + " row-" + row.status);
    tr.dataset.id = row.id;
    var prio = el("td"); prio.appendChild(el("span", "prio prio-" + row.priority, row.priority.toUpperCase()));
    if (row.raised) { var up = el("span", "raised", "▲ raised"); up.title = "Raised by the model from the ordered priority"; prio.appendChild(up); }
    tr.appendChild(prio);
    tr.appendChild(el("td", "mono", row.patient));
    var acc = el("td"); var a = el("a", "study-link", row.accession || "(no accession)"); a.href = row.url; acc.appendChild(a); tr.appendChild(acc);
    var wait = el("td", "num", row.waiting); wait.dataset.waiting = row.waiting_s; tr.appendChild(wait);
    var findings = el("td");
    if (row.findings.length) {
      var ul = el("ul", "finding-chips");
      row.findings.forEach(function (f) {
        var li = el("li", "chip chip-finding", f.label + " ");
        li.appendChild(el("span", "score", f.probability.toFixed(2)));
        ul.appendChild(li);
      });
      findings.appendChild(ul);
    } else {
      findings.appendChild(el("span", "muted", row.scored ? "no finding above threshold" : "—"));
    }
    tr.appendChild(findings);
    var status = el("td"); status.appendChild(el("span", "status status-" + row.status, row.status_label));
    if (row.reason) { status.appendChild(el("span", "reason", row.reason)); }
    if (row.placeholder) { status.appendChild(el("span", "reason warn", "placeholder model")); }
    tr.appendChild(status);
    if (!known.has(row.id)) { tr.classList.add("is-new"); }
    return tr;
  }

  function render(data) {
    var focusedId = document.activeElement && document.activeElement.closest("tr") ? document.activeElement.closest("tr").dataset.id : null;
    var fragment = document.createDocumentFragment();
    data.rows.forEach(function (row) { fragment.appendChild(rowFor(row)); });
    body.replaceChildren(fragment);
    known = new Set(data.rows.map(function (r) { return r.id; }));
    total.textContent = data.total;
    empty.hidden = data.rows.length > 0;
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    if (focusedId) {  // keep keyboard users where they were
      var again = body.querySelector('tr[data-id="' + focusedId + '"] a');
      if (again) { again.focus(); }
    }
  }

  function poll() {
    radtriageFetch(table.dataset.source + location.search,
                   { headers: { "Accept": "application/json", "X-Radtriage-Background": "1" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) { render(data); timer = setTimeout(poll, interval); })
      .catch(function (error) {
        if (error.signedOut) { return; }
        updated.textContent = "could not refresh (" + error.message + "); retrying";
        timer = setTimeout(poll, interval * 2);
      });
  }

  body.addEventListener("click", function (event) {
    if (event.target.closest("a")) { return; }
    var tr = event.target.closest("tr");
    var link = tr && tr.querySelector("a.study-link");
    if (link) { location.href = link.href; }
  });
  timer = setTimeout(poll, interval);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { clearTimeout(timer); poll(); }
  });
})();
