/* Worklist: asks the server for the current list every few seconds (with the page's filters and sort) and puts
   in the rows it renders, highlighting studies that were not there before. A new STAT study raises a visible
   banner and, when the reader turned sound on (browsers allow audio only after a click), a short tone.
   Stops polling once the session has ended. */
"use strict";
(function () {
  var table = document.getElementById("worklist");
  if (!table) { return; }
  var body = document.getElementById("worklist-rows");
  var empty = document.getElementById("worklist-empty");
  var total = document.getElementById("worklist-total");
  var updated = document.getElementById("worklist-updated");
  var alertBox = document.getElementById("stat-alert");
  var alertText = document.getElementById("stat-alert-text");
  var soundButton = document.getElementById("sound-toggle");
  var interval = parseInt(table.dataset.pollMs, 10) || 4000;
  var known = new Set(Array.prototype.map.call(body.rows, function (r) { return r.dataset.id; }));
  var timer = null;
  var audio = null;
  var soundOn = false;
  var baseTitle = document.title;

  function setSound(on) {
    soundOn = on;
    soundButton.setAttribute("aria-pressed", String(on));
    soundButton.textContent = "Sound alerts: " + (on ? "on" : "off");
    try { localStorage.setItem("radtriage-sound", on ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  function beep() {
    if (!soundOn || !audio) { return; }
    var now = audio.currentTime;
    [0, 0.25].forEach(function (offset) {
      var osc = audio.createOscillator(), gain = audio.createGain();
      osc.frequency.value = 880; osc.type = "sine";
      gain.gain.setValueAtTime(0.0001, now + offset);
      gain.gain.exponentialRampToValueAtTime(0.3, now + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + offset + 0.18);
      osc.connect(gain); gain.connect(audio.destination);
      osc.start(now + offset); osc.stop(now + offset + 0.2);
    });
    table.dataset.beeps = String((parseInt(table.dataset.beeps, 10) || 0) + 1);
  }

  soundButton.addEventListener("click", function () {
    if (!audio) {
      var Context = window.AudioContext || window.webkitAudioContext;
      if (Context) { audio = new Context(); }
    }
    setSound(!soundOn);
    if (soundOn) { beep(); }  // a test tone, so the reader knows what to listen for
  });
  try { if (localStorage.getItem("radtriage-sound") === "1") { soundButton.textContent = "Sound alerts: click to enable"; } } catch (e) { /* ignore */ }

  document.getElementById("stat-alert-dismiss").addEventListener("click", function () {
    alertBox.hidden = true; document.title = baseTitle;
  });

  function announceStat(rows) {
    var names = rows.map(function (r) { return r.accession || "(no accession)"; }).join(", ");
    alertText.textContent = names + " arrived at " + new Date().toLocaleTimeString() + ".";
    alertBox.hidden = false;
    document.title = "(STAT) " + baseTitle;
    table.dataset.statAlerts = String((parseInt(table.dataset.statAlerts, 10) || 0) + 1);
    beep();
  }

  function render(data) {
    var focusedId = document.activeElement && document.activeElement.closest("tr") ? document.activeElement.closest("tr").dataset.id : null;
    var arrivedStat = data.rows.filter(function (r) { return !known.has(r.id) && r.priority === "stat"; });
    var template = document.createElement("template");
    template.innerHTML = data.html;  // rendered (and escaped) by the server's own template
    template.content.querySelectorAll("tr").forEach(function (tr) {
      if (!known.has(tr.dataset.id)) { tr.classList.add("is-new"); }
    });
    body.replaceChildren(template.content);
    known = new Set(data.rows.map(function (r) { return r.id; }));
    total.textContent = data.total;
    empty.hidden = data.rows.length > 0;
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    if (arrivedStat.length) { announceStat(arrivedStat); }
    if (focusedId) {  // keep keyboard users where they were
      var again = body.querySelector('tr[data-id="' + focusedId + '"] a');
      if (again) { again.focus(); }
    }
  }

  function poll() {
    var search = location.search ? location.search + "&" : "?";
    radtriageFetch(table.dataset.source + search + "back=" + encodeURIComponent(table.dataset.back || ""),
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
    if (event.target.closest("a, button, form")) { return; }
    var tr = event.target.closest("tr");
    var link = tr && tr.querySelector("a.study-link");
    if (link) { location.href = link.href; }
  });
  timer = setTimeout(poll, interval);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { clearTimeout(timer); poll(); }
  });
})();
