// The studio page: /studio/{show}. The host picks a camera and microphone (or a screen), sees a
// preview, and goes live over WHIP with the stream key; live state, outgoing bitrate and the
// viewer count update every second.
import { $, api, connectionLost, endSession, showError, sleep, whipPublish } from "/static/common.js";

const [, , show] = location.pathname.split("/");
const whipUrl = new URL(`/whip/${show}`, location.href).toString();
const preview = $("#preview");
let stream = null;
let session = null;
let liveSince = null;

$("#whip-url").textContent = `WHIP URL (for OBS and other encoders): ${whipUrl}`;
$("#key").value = sessionStorage.getItem(`livecast.key.${show}`) || "";

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  for (const [kind, select] of [["videoinput", $("#camera")], ["audioinput", $("#microphone")]]) {
    const chosen = select.value;
    select.length = 1;
    for (const d of devices.filter((d) => d.kind === kind && d.deviceId)) {
      select.add(new Option(d.label || `${kind} ${select.length}`, d.deviceId));
    }
    select.value = chosen;
  }
}

async function capture() {
  const audio = $("#microphone").value ? { deviceId: { exact: $("#microphone").value } } : true;
  if ($("#source").value === "screen") {
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: false });
    const mic = await navigator.mediaDevices.getUserMedia({ audio });
    return new MediaStream([...screen.getVideoTracks(), ...mic.getAudioTracks()]);
  }
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
  if ($("#camera").value) video.deviceId = { exact: $("#camera").value };
  return navigator.mediaDevices.getUserMedia({ video, audio });
}

function describeMediaError(e) {
  if (e.name === "NotAllowedError") return "Camera or microphone access was refused. Allow it in the browser and try again.";
  if (e.name === "NotFoundError") return "No camera or microphone was found.";
  return e.message || String(e);
}

async function startPreview() {
  showError($("#error"), null);
  if (stream) stream.getTracks().forEach((t) => t.stop());
  try {
    stream = await capture();
  } catch (e) {
    stream = null;
    showError($("#error"), new Error(describeMediaError(e)));
    return false;
  }
  preview.srcObject = stream;
  await listDevices();
  return true;
}

function setLive(live, text) {
  $("#badge").textContent = text;
  $("#badge").classList.toggle("live", live);
  $("#live-button").disabled = live;
  $("#stop-button").disabled = !live;
  // While on air the tracks being sent must stay: no new capture until the host stops.
  for (const id of ["#key", "#source", "#camera", "#microphone", "#preview-button"]) $(id).disabled = live;
}

async function goLive(event) {
  event.preventDefault();
  showError($("#error"), null);
  const key = $("#key").value.trim();
  if (!key) {
    showError($("#error"), new Error("Enter the stream key first."));
    $("#key").focus();
    return;
  }
  if (!stream && !(await startPreview())) return; // the preview shows what goes out
  setLive(true, "Connecting…");
  try {
    session = await whipPublish(whipUrl, key, stream);
  } catch (e) {
    setLive(false, "Off air");
    showError($("#error"), e.status === 401 ? new Error("The stream key is not right for this show.") : e);
    return;
  }
  sessionStorage.setItem(`livecast.key.${show}`, key);
  liveSince = Date.now();
  setLive(true, "LIVE");
  const mine = session;
  connectionLost(mine.pc).then(() => {
    if (session !== mine) return; // stopped on purpose
    session = null;
    liveSince = null;
    setLive(false, "Connection lost");
    showError($("#error"), new Error("The connection to the server was lost. Press Go live to continue the show."));
  });
}

async function stop() {
  const ending = session;
  session = null;
  liveSince = null;
  setLive(false, "Ended");
  if (ending) { // DELETE first: it ends the show; a closed peer alone would look like a drop
    await endSession(ending.location, $("#key").value.trim());
    ending.pc.close();
  }
}

let lastBytes = null;
async function measure() {
  for (;;) {
    await sleep(1000);
    if (session) {
      const stats = await session.pc.getStats();
      let bytes = 0;
      stats.forEach((s) => { if (s.type === "outbound-rtp") bytes += s.bytesSent; });
      const now = performance.now();
      if (lastBytes) $("#bitrate").textContent = Math.round((8 * (bytes - lastBytes.bytes)) / (now - lastBytes.at));
      lastBytes = { bytes, at: now };
      const seconds = Math.floor((Date.now() - liveSince) / 1000);
      $("#elapsed").textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
    } else {
      lastBytes = null;
      $("#bitrate").textContent = "–";
    }
  }
}

/** The show ended without the host (the operator ended it): stop sending and say so. */
function endedByOperator() {
  const ending = session;
  session = null;
  liveSince = null;
  if (ending) ending.pc.close();
  setLive(false, "Ended");
  $("#live-button").disabled = true; // an ended show cannot go live again
  showError($("#error"), new Error("The operator ended the show. Ask for a new show to go live again."));
}

async function followStatus() {
  for (;;) {
    try {
      const status = await api("GET", `/api/shows/${show}/status`);
      $("#title").textContent = `Studio · ${status.title}`;
      $("#viewers").textContent = status.viewers;
      if (status.state === "ended" && $("#badge").textContent !== "Ended") endedByOperator();
    } catch (e) {
      if (e.status === 404) showError($("#error"), e);
    }
    await sleep(session ? 1000 : 2000); // on air: notice an operator's end within a second
  }
}

$("#preview-button").addEventListener("click", startPreview);
$("#setup").addEventListener("submit", goLive);
$("#stop-button").addEventListener("click", stop);
for (const id of ["#source", "#camera", "#microphone"]) {
  $(id).addEventListener("change", () => { if (!session) startPreview(); });
}
listDevices();
measure();
followStatus();
