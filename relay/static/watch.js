// Plays /whep/{show}[/{room}] for the page /watch/{show}[/{room}], reconnecting on failure.
const video = document.getElementById("video");
const status = document.getElementById("status");
const whepUrl = location.pathname.replace(/^\/watch\//, "/whep/");

document.getElementById("unmute").addEventListener("click", (e) => {
  video.muted = false;
  e.target.hidden = true;
});

async function play() {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.ontrack = (ev) => { stream.addTrack(ev.track); video.srcObject = stream; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    setTimeout(resolve, 1000);
  });
  const res = await fetch(whepUrl, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
  });
  if (res.status !== 201) {
    const err = await res.json().catch(() => ({ message: res.statusText }));
    pc.close();
    throw new Error(err.message);
  }
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  status.textContent = "live";
  return new Promise((resolve) => {
    pc.onconnectionstatechange = () => {
      if (["failed", "closed", "disconnected"].includes(pc.connectionState)) { pc.close(); resolve(); }
    };
  });
}

async function loop() {
  for (;;) {
    try { await play(); status.textContent = "reconnecting…"; }
    catch (e) { status.textContent = e.message; }
    await new Promise((r) => setTimeout(r, 2000));
  }
}
loop();
