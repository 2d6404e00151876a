// Live avatar browser client: vanilla JS, no build step.
// Sends the microphone (or an audio file through WebAudio) to POST /offer and shows the avatar.
// URL options: ?mode=obs (no UI, auto-connect, reconnect), ?avatar=KEY, ?source=mic|file,
// ?audio=URL (play this file into the connection), ?token=BEARER, ?fps=25|30, ?resolution=N.
"use strict";

(() => {
  const qs = new URLSearchParams(location.search);
  const obsMode = qs.get("mode") === "obs";
  const $ = (id) => document.getElementById(id);
  const video = $("video");

  // Exposed for kiosks, tests and debugging: the live state of the connection. videoStats holds the
  // browser's cumulative video counters (getStats), so a watcher can difference any two readings:
  // freezes, frames the browser dropped, jitter-buffer delay over a window.
  const state = {
    state: "idle", sessionId: null, error: null, fps: 0, framesDecoded: 0, framesReceived: 0,
    latencyMs: null, rttMs: null, motionFrames: 0, lastMotion: null, videoStats: null,
  };
  window.avatarState = state;

  let pc = null, dc = null, audioCtx = null, fileBuffer = null, fileSource = null, fileDest = null;
  let micStream = null, statsTimer = null, pingTimer = null, reconnectTimer = null;
  let uploadedKey = null;

  function setState(s, message, isError) {
    state.state = s;
    $("o-state").textContent = s;
    $("connect").disabled = s === "connecting" || s === "connected";
    $("disconnect").disabled = s === "idle" || s === "closed" || s === "failed";
    if (message !== undefined) {
      $("message").textContent = message;
      $("message").classList.toggle("error", !!isError);
    }
  }

  function authHeaders() {
    const token = qs.get("token");
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function params() {
    const p = {};
    for (const key of ["fps", "resolution", "inference_steps", "dynamic_scale", "motion_scale", "smooth_motion", "align_mouth"]) {
      const fromUrl = qs.get(key);
      const el = $(`p-${key}`);
      const raw = fromUrl !== null ? fromUrl : el && el.value;
      if (raw !== null && raw !== undefined && raw !== "") p[key] = Number(raw);
    }
    return p;
  }

  async function chosenAvatar() {
    if (qs.get("avatar")) return qs.get("avatar");
    const kind = document.querySelector("input[name=avatar-kind]:checked").value;
    if (kind === "default") return "default";
    if (uploadedKey) return uploadedKey;
    throw new Error("choose a photo first");
  }

  async function uploadPhoto(file) {
    $("photo-status").textContent = "registering…";
    const form = new FormData();
    form.append("image", file);
    const resp = await fetch("/api/avatars", { method: "POST", body: form, headers: authHeaders() });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      uploadedKey = null;
      $("photo-status").textContent = body.error || `upload failed (${resp.status})`;
      return;
    }
    uploadedKey = body.avatar;
    $("photo-status").textContent = `ready (${body.width}×${body.height})`;
  }

  function ctx() {
    if (!audioCtx) audioCtx = new AudioContext({ sampleRate: 48000 });
    return audioCtx;
  }

  async function loadFile(blobOrUrl) {
    const data = typeof blobOrUrl === "string"
      ? await (await fetch(blobOrUrl)).arrayBuffer()
      : await blobOrUrl.arrayBuffer();
    fileBuffer = await ctx().decodeAudioData(data);
    $("play-file").disabled = false;
  }

  function playFile() {
    if (!fileBuffer || !fileDest) return;
    if (fileSource) { try { fileSource.stop(); } catch (e) { /* already stopped */ } }
    fileSource = ctx().createBufferSource();
    fileSource.buffer = fileBuffer;
    fileSource.connect(fileDest);  // into the connection only: the avatar speaks it back
    fileSource.start();
  }

  async function inputStream() {
    const source = qs.get("audio") ? "file" : (qs.get("source") || document.querySelector("input[name=source]:checked").value);
    if (source === "file") {
      await ctx().resume();
      fileDest = ctx().createMediaStreamDestination();
      if (qs.get("audio") && !fileBuffer) await loadFile(qs.get("audio"));
      return fileDest.stream;
    }
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    return micStream;
  }

  function waitForIce(conn) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (conn.iceGatheringState === "complete") {
          conn.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      conn.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 2000);  // host candidates are enough on a LAN
    });
  }

  async function connect() {
    clearTimeout(reconnectTimer);
    state.error = null;
    setState("connecting", "connecting…");
    try {
      const avatar = await chosenAvatar();
      const stream = await inputStream();
      pc = new RTCPeerConnection({ iceServers: [] });
      for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
      pc.addTransceiver("video", { direction: "recvonly" });
      const remote = new MediaStream();
      video.srcObject = remote;
      pc.ontrack = (e) => { remote.addTrack(e.track); video.play().catch(() => {}); };
      pc.onconnectionstatechange = () => {
        const s = pc && pc.connectionState;
        if (s === "connected") setState("connected", "connected");
        if (s === "failed" || s === "closed" || s === "disconnected") {
          setState(s === "disconnected" ? "reconnecting" : "closed", `connection ${s}`);
          if (s !== "disconnected") scheduleReconnect();
        }
      };
      // Unordered and never retransmitted: a late motion frame is useless, and on a reliable ordered
      // channel one lost packet held every later frame back for SCTP's retransmission timeout (1-3 s).
      // OBS / kiosk mode shows no overlay: its "control" channel carries the heartbeat, not the motion.
      dc = pc.createDataChannel(obsMode ? "control" : "motion", { ordered: false, maxRetransmits: 0 });
      dc.onmessage = onMotion;
      dc.onopen = () => {
        pingTimer = setInterval(() => {
          if (dc && dc.readyState === "open") dc.send(JSON.stringify({ type: "ping", t: performance.now() }));
        }, 1000);  // also the server's heartbeat: a vanished tab is noticed within seconds
      };
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc);
      const resp = await fetch("/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", avatar, params: params() }),
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) throw new Error(body.error || `server answered ${resp.status}`);
      state.sessionId = body.session_id;
      await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
      statsTimer = setInterval(pollStats, 1000);
      if (fileBuffer && fileDest) playFile();
    } catch (err) {
      state.error = String(err.message || err);
      await teardown(false);
      setState("failed", state.error, true);
      scheduleReconnect();
    }
  }

  function onMotion(e) {
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    if (msg.type === "pong") {
      if (typeof msg.t === "number") state.rttMs = Math.round(performance.now() - msg.t);
      return;
    }
    if (msg.channels) {
      state.motionFrames += 1;
      state.lastMotion = msg;
      if (typeof msg.latency === "number") state.latencyMs = Math.round(msg.latency * 1000);
      // A 3D avatar would apply msg.channels (ARKit names) here.
      window.dispatchEvent(new CustomEvent("avatar-motion", { detail: msg }));
    }
  }

  let lastDecoded = 0, lastTime = 0;
  async function pollStats() {
    if (!pc) return;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        const now = s.timestamp;
        if (lastTime && now > lastTime) state.fps = Math.round(((s.framesDecoded - lastDecoded) * 1000) / (now - lastTime) * 10) / 10;
        lastDecoded = s.framesDecoded || 0;
        lastTime = now;
        state.framesDecoded = s.framesDecoded || 0;
        state.framesReceived = s.framesReceived || 0;
        state.videoStats = {
          jitterBufferDelay: s.jitterBufferDelay || 0, jitterBufferTargetDelay: s.jitterBufferTargetDelay || 0,
          jitterBufferEmittedCount: s.jitterBufferEmittedCount || 0, freezeCount: s.freezeCount || 0,
          totalFreezesDuration: s.totalFreezesDuration || 0, framesDropped: s.framesDropped || 0,
        };
        if (s.jitterBufferEmittedCount) state.jitterMs = Math.round((s.jitterBufferDelay / s.jitterBufferEmittedCount) * 1000);
      }
    });
    $("o-fps").textContent = `${state.fps} fps`;
    const parts = [];
    if (state.latencyMs !== null) parts.push(`mouth ${state.latencyMs} ms`);
    if (state.rttMs !== null) parts.push(`rtt ${state.rttMs} ms`);
    if (state.jitterMs !== undefined) parts.push(`jb ${state.jitterMs} ms`);
    $("o-latency").textContent = parts.join(" · ") || "– ms";
  }

  function scheduleReconnect() {
    if (!obsMode) return;  // kiosks and OBS keep trying; a person clicks Connect
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(async () => { await teardown(false); connect(); }, 3000);
  }

  async function teardown(tellServer) {
    clearInterval(statsTimer); clearInterval(pingTimer);
    const sid = state.sessionId;
    if (tellServer && sid) {
      fetch(`/sessions/${sid}`, { method: "DELETE", headers: authHeaders() }).catch(() => {});
    }
    if (dc) { try { dc.close(); } catch (e) { /* closed */ } dc = null; }
    if (pc) { pc.onconnectionstatechange = null; pc.close(); pc = null; }
    if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
    state.sessionId = null;
  }

  async function disconnect() {
    clearTimeout(reconnectTimer);
    await teardown(true);
    setState("idle", "disconnected");
  }

  function setClean(on) {
    document.body.classList.toggle("clean", on);
    if (on && document.documentElement.requestFullscreen && !obsMode) {
      document.documentElement.requestFullscreen().catch(() => {});
    } else if (!on && document.fullscreenElement) {
      document.exitFullscreen().catch(() => {});
    }
  }

  // -- wiring -----------------------------------------------------------------
  $("connect").onclick = connect;
  $("disconnect").onclick = disconnect;
  $("full").onclick = () => setClean(true);
  $("exit-full").onclick = () => setClean(false);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") setClean(false); });
  for (const el of document.querySelectorAll("input[name=avatar-kind]")) {
    el.onchange = () => { if (el.value === "upload" && el.checked) $("photo").click(); };
  }
  $("photo").onchange = () => { if ($("photo").files[0]) uploadPhoto($("photo").files[0]); };
  for (const el of document.querySelectorAll("input[name=source]")) {
    el.onchange = () => {
      const file = el.value === "file" && el.checked;
      $("file-controls").hidden = !file;
      if (file) $("audio-file").click();
    };
  }
  $("audio-file").onchange = () => { if ($("audio-file").files[0]) loadFile($("audio-file").files[0]); };
  $("play-file").onclick = playFile;
  window.addEventListener("pagehide", () => teardown(true));
  window.avatarConnect = connect;
  window.avatarDisconnect = disconnect;

  setState("idle");
  if (obsMode) {
    document.body.classList.add("clean", "obs");
    connect();
  } else if (qs.get("autostart") === "1") {
    connect();
  }
})();
