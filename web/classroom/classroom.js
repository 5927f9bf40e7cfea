// classmesh classroom client: one page, one WebSocket (signaling v1, docs/signaling.md), two peer
// connections to the media node:
//   publisher  - this browser offers sendonly camera + microphone (+ screen), the node answers;
//   subscriber - the node offers everyone else's tracks, this browser answers.
// The node does not trickle ICE, so every offer/answer is sent after ICE gathering completes.
// The socket reconnects by itself: it resumes the session (media keeps flowing meanwhile) and falls back
// to a fresh hello with the join token when the session has expired.
//
// Test hook: window.classmesh = {state, participants, pcs, stats(), leave(), rejoin(), events}.

const PROTOCOL_VERSION = 1;
const GATHER_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 15000;
const MAX_BACKOFF_MS = 5000;
const OLD_PUBLISHER_GRACE_MS = 8000;
const FATAL_CODES = new Set([
  "token_invalid", "token_expired", "token_wrong_room", "token_role_mismatch", "unsupported_version",
]);
const CLOSE_AUTH_FAILED = 4401;
const CLOSE_REMOVED = 4403;
const CLOSE_RESUMED_ELSEWHERE = 4409;

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------ signaling

class SignalError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** One WebSocket: requests with ids resolve on their reply; everything else goes to onMessage. */
class SignalSocket {
  constructor(url, { onMessage, onClose }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.pending = new Map();
    this.nextId = 1;
    this.ws = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new SignalError("socket_error", "could not reach the signaling server"));
      ws.onmessage = (event) => this.receive(event.data);
      ws.onclose = (event) => {
        for (const { reject: fail, timer } of this.pending.values()) {
          clearTimeout(timer);
          fail(new SignalError("socket_closed", "connection lost"));
        }
        this.pending.clear();
        this.onClose(event.code, event.reason);
      };
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(msg) {
    if (!this.isOpen) throw new SignalError("socket_closed", "not connected");
    this.ws.send(JSON.stringify(msg));
  }

  request(msg) {
    const id = `c${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SignalError("timeout", `no reply to ${msg.type}`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.send({ ...msg, id });
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(err);
      }
    });
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const waiter = msg.id !== undefined ? this.pending.get(msg.id) : undefined;
    if (waiter) {
      this.pending.delete(msg.id);
      clearTimeout(waiter.timer);
      if (msg.type === "error") waiter.reject(new SignalError(msg.code, msg.message));
      else waiter.resolve(msg);
      return;
    }
    this.onMessage(msg);
  }

  close(code = 1000, reason = "") {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(code, reason);
      for (const { reject, timer } of this.pending.values()) {
        clearTimeout(timer);
        reject(new SignalError("socket_closed", "closed"));
      }
      this.pending.clear();
    }
  }
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const timer = setTimeout(finish, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function decodeTokenClaims(token) {
  // For display only (room name); the server verifies the token.
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      [...atob(part)].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`).join(""),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

// ------------------------------------------------------------------------------------------ classroom

class Classroom {
  constructor({ token, roomId, wsUrl }) {
    this.token = token;
    this.roomId = roomId;
    this.wsUrl = wsUrl;
    this.state = "starting"; // starting | connecting | joined | reconnecting | left | removed | failed
    this.moves = 0;
    this.socket = null;
    this.participantId = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this.you = null;
    this.iceServers = [];
    this.participants = new Map(); // participant_id -> {participant_id, identity, name, role, tracks, hand_raised, speaking}
    this.trackMap = new Map(); // subscriber mid -> {participant_id, source, kind}
    this.publisher = null;
    this.subscriber = null;
    this.localStream = null;
    this.screenTrack = null;
    this.screenTransceiver = null;
    this.micMuted = false;
    this.cameraOff = false;
    this.handRaised = false;
    this.asked = new Map();  // poll id -> {correct, answers: participant id -> choice}, for moderators
    this.subscriberChain = Promise.resolve();
    this.publisherChain = Promise.resolve();
    this.reconnectAttempt = 0;
    this.stopped = false;
    this.events = [];
    this.tiles = new Map(); // key -> {el, video, stream}
    this.next = null; // during a move: {subscriber, trackMap} on the new node
    this.frameStats = new Map(); // tile key -> {last, maxGap, frames}: what people see, frame by frame
    this.sources = new Map(); // publisher transceiver -> camera | microphone | screen
  }

  // --- lifecycle ---------------------------------------------------------------------------------
  async start() {
    if (!this.token) {
      this.fail("This link has no join token. Ask for a new link.");
      return;
    }
    this.log("script start");
    const claims = decodeTokenClaims(this.token);
    $("room-title").textContent = `Classroom ${claims.room || this.roomId}`;
    // The first RTCPeerConnection of a page costs tens of milliseconds to set up; make it while the socket
    // connects rather than when the node's first offer is waiting (setConfiguration adds the ICE servers).
    this.warmSubscriber = new RTCPeerConnection();
    this.log("peer connection made");
    await this.connect();
  }

  setState(state, text, isError = false) {
    this.state = state;
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
    document.body.dataset.state = state;
  }

  fail(text) {
    this.stopped = true;
    this.setState("failed", text, true);
  }

  async connect() {
    this.stopped = false;
    while (!this.stopped) {
      this.setState(this.resumeToken ? "reconnecting" : "connecting",
        this.resumeToken ? "Reconnecting…" : "Connecting…");
      const socket = new SignalSocket(this.wsUrl, {
        onMessage: (msg) => this.onMessage(msg),
        onClose: (code, reason) => this.onSocketClosed(socket, code, reason),
      });
      try {
        await socket.open();
        this.log("socket open");
        this.socket = socket;
        let welcome = null;
        if (this.resumeToken) {
          try {
            welcome = await socket.request({
              type: "resume", v: PROTOCOL_VERSION, resume_token: this.resumeToken, last_seq: this.lastSeq,
            });
          } catch (err) {
            if (err.code !== "session_expired") throw err;
            this.log("session expired; joining again");
            this.resetSession();
          }
        }
        if (welcome === null) {
          welcome = await socket.request({
            type: "hello", v: PROTOCOL_VERSION, token: this.token, room: this.roomId,
          });
        }
        this.reconnectAttempt = 0;
        await this.onWelcome(welcome);
        return;
      } catch (err) {
        socket.close();
        if (this.socket === socket) this.socket = null;
        if (FATAL_CODES.has(err.code)) {
          this.fail(`Cannot join: ${err.message}`);
          return;
        }
        const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.reconnectAttempt) * (0.75 + Math.random() / 2);
        this.reconnectAttempt += 1;
        this.setState("reconnecting", `Connection problem (${err.code || err.message}); retrying…`, true);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  onSocketClosed(socket, code, reason) {
    if (socket !== this.socket) return;
    this.socket = null;
    if (this.stopped) return;
    if (code === CLOSE_AUTH_FAILED) {
      this.fail(`Cannot join: ${reason || "token refused"}`);
    } else if (code === CLOSE_REMOVED) {
      this.stopped = true;
      this.teardownMedia();
      this.setState("removed", "You were removed from the class.", true);
    } else if (code === CLOSE_RESUMED_ELSEWHERE) {
      this.stopped = true;
      this.setState("failed", "This class is open in another window.", true);
    } else if (this.state === "joined" || this.state === "reconnecting") {
      this.log(`socket closed (${code}); resuming`);
      this.connect();
    }
  }

  resetSession() {
    this.resumeToken = null;
    this.participantId = null;
    this.lastSeq = 0;
    this.teardownMedia({ keepLocal: true });
    this.participants.clear();
    this.trackMap.clear();
    this.renderAll();
  }

  async onWelcome(welcome) {
    this.log("welcome");
    const fresh = !welcome.resumed;
    this.participantId = welcome.participant_id;
    this.resumeToken = welcome.resume_token;
    this.you = welcome.you;
    this.iceServers = welcome.ice_servers || [];
    if (fresh) this.lastSeq = 0;
    this.participants.clear();
    for (const p of welcome.participants || []) {
      if (p.participant_id !== this.participantId) this.participants.set(p.participant_id, { ...p });
    }
    this.setState("joined", `In class as ${this.you.name} (${this.you.role})`);
    this.setupControls();
    if (fresh || !this.subscriber) {
      this.teardownMedia({ keepLocal: true });
      this.subscriber = this.createSubscriber();
      if (this.canPublish()) await this.startPublishing();
    }
    this.renderAll();
  }

  async leave() {
    this.stopped = true;
    const socket = this.socket;
    if (socket && socket.isOpen) {
      try {
        await socket.request({ type: "leave" });
      } catch (err) {
        this.log(`leave: ${err.code}`);
      }
      socket.close();
    }
    this.socket = null;
    this.resumeToken = null;
    this.teardownMedia();
    this.participants.clear();
    this.trackMap.clear();
    this.renderAll();
    this.setState("left", "You left the class.");
    $("btn-rejoin").hidden = false;
    $("btn-leave").hidden = true;
  }

  async rejoin() {
    $("btn-rejoin").hidden = true;
    $("btn-leave").hidden = false;
    this.resumeToken = null;
    this.lastSeq = 0;
    await this.connect();
  }

  // --- node messages -----------------------------------------------------------------------------
  onMessage(msg) {
    if (typeof msg.seq === "number") this.lastSeq = Math.max(this.lastSeq, msg.seq);
    switch (msg.type) {
      case "subscriber_offer":
        this.subscriberChain = this.subscriberChain
          .then(() => this.answerSubscriberOffer(msg))
          .catch((err) => this.log(`subscriber negotiation failed: ${err.message || err}`));
        break;
      case "participant_joined": {
        const p = msg.participant;
        if (p && p.participant_id !== this.participantId) {
          this.participants.set(p.participant_id, { ...p });
          this.systemMessage(`${p.name} joined`);
        }
        break;
      }
      case "participant_left": {
        const p = this.participants.get(msg.participant_id);
        this.participants.delete(msg.participant_id);
        for (const [mid, info] of this.trackMap) {
          if (info.participant_id === msg.participant_id) this.trackMap.delete(mid);
        }
        if (p) this.systemMessage(`${p.name} left`);
        break;
      }
      case "track_published": {
        const p = this.participants.get(msg.participant_id);
        if (p) p.tracks = [...(p.tracks || []).filter((t) => t.track_id !== msg.track.track_id), msg.track];
        break;
      }
      case "track_unpublished": {
        const p = this.participants.get(msg.participant_id);
        if (p) p.tracks = (p.tracks || []).filter((t) => t.track_id !== msg.track_id);
        break;
      }
      case "track_muted": {
        const p = this.participants.get(msg.participant_id);
        if (p) {
          for (const t of p.tracks || []) if (t.source === msg.source) t.muted = msg.muted;
        }
        break;
      }
      case "speaking": {
        const p = this.participants.get(msg.participant_id);
        if (p) {
          p.speaking = msg.speaking;
          p.talk_time_ms = msg.talk_time_ms;
        }
        break;
      }
      case "quality": {
        const p = this.participants.get(msg.participant_id);
        if (p) p.quality = msg.quality;
        break;
      }
      case "data":
        this.onData(msg);
        break;
      case "removed":
        this.systemMessage(`Removed: ${msg.reason || "by a moderator"}`);
        break;
      case "moved":
        this.onMoved(msg);
        break;
      case "error":
        this.log(`server error ${msg.code}: ${msg.message}`);
        break;
      default:
        break;
    }
    this.renderAll();
  }

  onMoved(msg) {
    // The room now lives on another node: signaling has already joined us there. Make before break: build new
    // peer connections to the new node while the old ones keep playing, switch when the new one decodes video
    // from everyone, then close the old ones. (When the old node died, the old connections are dead anyway.)
    this.log(`room moved to node ${msg.node_id} (${msg.reason || "moved"})`);
    this.moves += 1;
    if (msg.ice_servers) this.iceServers = msg.ice_servers;
    if (this.next) this.next.subscriber.close();
    const old = { publisher: this.publisher, subscriber: this.subscriber };
    this.next = { subscriber: this.createSubscriber(), trackMap: new Map() };
    this.publisher = null;
    this.screenTransceiver = null;
    this.publisherChain = Promise.resolve();
    if (this.canPublish() && this.localStream) this.startPublishing();
    this.switchWhenReady(old, msg.reason === "node_failed" ? 0 : 5000);
  }

  async switchWhenReady(old, patienceMs) {
    const next = this.next;
    const deadline = performance.now() + patienceMs;
    while (patienceMs > 0 && performance.now() < deadline && this.next === next) {
      if (next.subscriber.connectionState === "connected" && (await this.decodesEveryone(next))) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    if (this.next !== next) return; // superseded by another move
    this.subscriber = next.subscriber;
    this.trackMap = next.trackMap;
    this.next = null;
    if (old.subscriber) old.subscriber.close();
    // Others may still be watching us through the old node until they switch too: keep publishing there
    // until the old node closes the room (the orchestrator's grace period), then let go.
    if (old.publisher) setTimeout(() => old.publisher.close(), OLD_PUBLISHER_GRACE_MS);
    this.log("switched to the new node");
    this.renderAll();
  }

  async decodesEveryone(next) {
    const cameras = [...this.participants.values()].filter((p) => (p.tracks || []).some((t) => t.source === "camera"));
    const decoded = new Set();
    const report = await next.subscriber.getStats();
    const byMid = new Map([...next.subscriber.getTransceivers()].map((t) => [t.mid, t]));
    for (const s of report.values()) {
      if (s.type !== "inbound-rtp" || s.kind !== "video" || !(s.framesDecoded > 0)) continue;
      const info = next.trackMap.get(s.mid ?? [...byMid.entries()].find(([, t]) => t.receiver.track.id === s.trackIdentifier)?.[0]);
      if (info) decoded.add(info.participant_id);
    }
    return cameras.every((p) => decoded.has(p.participant_id));
  }

  onData(msg) {
    const from = msg.from || {};
    const isMe = from.participant_id === this.participantId;
    if (msg.kind === "chat") {
      this.chatMessage(isMe ? "You" : from.name || from.identity || "?", String(msg.body?.text ?? ""));
    } else if (msg.kind === "hand") {
      const p = this.participants.get(from.participant_id);
      if (p) p.hand_raised = Boolean(msg.body?.raised);
      if (isMe) this.handRaised = Boolean(msg.body?.raised);
    } else if (msg.kind === "reaction") {
      this.burst(isMe ? "local:camera" : `${from.participant_id}:camera`, String(msg.body?.emoji ?? ""));
    } else if (msg.kind === "poll" || msg.kind === "check") {
      this.showQuestion(msg, isMe);
    } else if (msg.kind === "poll_answer" || msg.kind === "check_answer") {
      this.countAnswer(msg);
    }
  }

  // --- polls and comprehension checks -------------------------------------------------------------
  /** An instructor puts a question to the room; with a right option it is a comprehension check. */
  async ask(question, options, correct) {
    const pollId = `q${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    const msg = { type: "poll", poll_id: pollId, question, options };
    if (correct !== null) msg.correct = correct;
    this.asked.set(pollId, { correct, answers: new Map() });
    try {
      await this.send(msg);
    } catch (err) {
      this.asked.delete(pollId);
      this.systemMessage(`Not asked: ${err.message}`);
    }
  }

  showQuestion(msg, isMe) {
    const body = msg.body || {};
    const options = Array.isArray(body.options) ? body.options.map(String) : [];
    const li = document.createElement("li");
    li.className = "question";
    li.dataset.poll = String(body.poll_id ?? "");
    const title = document.createElement("p");
    title.className = "question-text";
    title.textContent = `${msg.kind === "check" ? "Check" : "Poll"}: ${String(body.question ?? "")}`;
    const choices = document.createElement("div");
    choices.className = "choices";
    const answering = this.can("data") && !this.can("moderate") && !isMe;
    options.forEach((text, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = text;
      button.dataset.choice = String(index);
      button.disabled = !answering;
      button.addEventListener("click", () => this.answer(li, msg.kind === "check", index));
      choices.append(button);
    });
    const tally = document.createElement("p");
    tally.className = "tally";
    li.append(title, choices, tally);
    this.appendMessage(li);
    this.renderTally(li);
  }

  async answer(li, check, choice) {
    const buttons = [...li.querySelectorAll("button")];
    for (const b of buttons) b.disabled = true;
    try {
      await this.send({ type: "answer", poll_id: li.dataset.poll, choice, check });
      buttons[choice].setAttribute("aria-pressed", "true");
      li.querySelector(".tally").textContent = "Answer sent";
    } catch (err) {
      for (const b of buttons) b.disabled = false;
      li.querySelector(".tally").textContent = `Not sent: ${err.message}`;
    }
  }

  countAnswer(msg) {
    const pollId = String(msg.body?.poll_id ?? "");
    let poll = this.asked.get(pollId);
    if (!poll) {
      poll = { correct: null, answers: new Map() };  // another moderator asked it
      this.asked.set(pollId, poll);
    }
    poll.answers.set(msg.from?.participant_id, Number(msg.body?.choice));
    const li = document.querySelector(`#messages li.question[data-poll="${CSS.escape(pollId)}"]`);
    if (li) this.renderTally(li);
  }

  /** For whoever asks: how many answered, and how many chose each option. */
  renderTally(li) {
    const poll = this.asked.get(li.dataset.poll);
    if (!poll) return;
    const options = [...li.querySelectorAll("button")].map((b) => b.textContent);
    const counts = options.map((_, i) => [...poll.answers.values()].filter((c) => c === i).length);
    const parts = options.map((text, i) => `${text}: ${counts[i]}${poll.correct === i ? " (right)" : ""}`);
    li.querySelector(".tally").textContent = `${poll.answers.size} answer(s) · ${parts.join(" · ")}`;
  }

  // --- media -------------------------------------------------------------------------------------
  canPublish() {
    const perms = this.you?.permissions || [];
    return perms.includes("publish_audio") || perms.includes("publish_video");
  }

  can(permission) {
    return (this.you?.permissions || []).includes(permission);
  }

  rtcConfig() {
    return { iceServers: this.iceServers, bundlePolicy: "max-bundle" };
  }

  createSubscriber() {
    // The node offers here; its offer may not bundle audio and video, and a max-bundle answerer would
    // then only connect the first transport. The default policy follows whatever the offer does.
    const pc = this.warmSubscriber || new RTCPeerConnection();
    this.warmSubscriber = null;
    pc.setConfiguration({ iceServers: this.iceServers });
    pc.ontrack = () => this.renderAll();
    pc.onconnectionstatechange = () => this.log(`subscriber ${pc.connectionState}`);
    return pc;
  }

  async answerSubscriberOffer(msg) {
    // after a move, offers come from the new node and belong to the new subscriber connection
    const target = this.next || this;
    const pc = target.subscriber;
    const trackMap = target.trackMap;
    if (!pc || !this.socket) return;
    this.log("subscriber offer");
    for (const [mid, info] of Object.entries(msg.tracks || {})) trackMap.set(mid, info);
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    this.log("subscriber offer applied");
    await pc.setLocalDescription(await pc.createAnswer());
    this.log("subscriber answer made");
    await gatheringComplete(pc);
    // forget mids the node no longer sends
    const live = new Set(Object.keys(msg.tracks || {}));
    for (const mid of [...trackMap.keys()]) if (!live.has(mid)) trackMap.delete(mid);
    this.log("subscriber answer");
    await this.socket.request({ type: "subscriber_answer", sdp: pc.localDescription.sdp });
    this.renderAll();
  }

  async startPublishing() {
    const wantVideo = this.can("publish_video");
    const wantAudio = this.can("publish_audio");
    if (!this.localStream) {
      try {
        this.localStream = await navigator.mediaDevices.getUserMedia({
          audio: wantAudio,
          video: wantVideo ? { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 15 } } : false,
        });
      } catch (err) {
        this.systemMessage(`Camera/microphone unavailable: ${err.message}`);
        return;
      }
      this.log("camera open");
    }
    const pc = new RTCPeerConnection(this.rtcConfig());
    pc.onconnectionstatechange = () => this.log(`publisher ${pc.connectionState}`);
    this.publisher = pc;
    this.sources = new Map(); // transceiver -> source
    for (const track of this.localStream.getTracks()) {
      const t = pc.addTransceiver(track, { direction: "sendonly", streams: [this.localStream] });
      this.sources.set(t, track.kind === "audio" ? "microphone" : "camera");
    }
    if (this.screenTrack) this.addScreenTransceiver();
    await this.negotiatePublisher();
  }

  addScreenTransceiver() {
    const t = this.publisher.addTransceiver(this.screenTrack, { direction: "sendonly" });
    this.sources.set(t, "screen");
    this.screenTransceiver = t;
  }

  negotiatePublisher() {
    this.publisherChain = this.publisherChain.then(async () => {
      const pc = this.publisher;
      if (!pc || !this.socket) return;
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc);
      const sources = {};
      for (const [t, source] of this.sources) {
        if (t.mid !== null && t.direction === "sendonly") sources[t.mid] = source;
      }
      const reply = await this.socket.request({ type: "publish", sdp: pc.localDescription.sdp, sources });
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    }).catch((err) => {
      this.log(`publish failed: ${err.code || err.message}`);
      if (err.code) this.systemMessage(`Could not publish: ${err.message}`);
    });
    return this.publisherChain;
  }

  teardownMedia({ keepLocal = false } = {}) {
    for (const pc of [this.publisher, this.subscriber, this.next?.subscriber]) if (pc) pc.close();
    this.next = null;
    this.publisher = null;
    this.subscriber = null;
    this.screenTransceiver = null;
    this.subscriberChain = Promise.resolve();
    this.publisherChain = Promise.resolve();
    if (!keepLocal) {
      if (this.localStream) for (const t of this.localStream.getTracks()) t.stop();
      if (this.screenTrack) this.screenTrack.stop();
      this.localStream = null;
      this.screenTrack = null;
    }
  }

  // --- controls ----------------------------------------------------------------------------------
  setupControls() {
    $("publish-controls").hidden = !this.canPublish();
    $("btn-screen").hidden = !this.can("publish_screen");
    $("data-controls").hidden = !this.can("data");
    $("btn-ask").hidden = !this.can("moderate");
    for (const el of document.querySelectorAll("#chat-form input, #chat-form button")) {
      el.disabled = !this.can("data");
    }
  }

  async send(msg) {
    if (!this.socket) throw new SignalError("socket_closed", "not connected");
    return this.socket.request(msg);
  }

  async toggleMic() {
    const track = this.localStream?.getAudioTracks()[0];
    if (!track) return;
    this.micMuted = !this.micMuted;
    track.enabled = !this.micMuted;
    $("btn-mic").textContent = this.micMuted ? "Unmute" : "Mute";
    $("btn-mic").setAttribute("aria-pressed", String(this.micMuted));
    await this.send({ type: "mute", source: "microphone", muted: this.micMuted }).catch((e) => this.log(e.code));
  }

  async toggleCamera() {
    const track = this.localStream?.getVideoTracks()[0];
    if (!track) return;
    this.cameraOff = !this.cameraOff;
    track.enabled = !this.cameraOff;
    $("btn-camera").textContent = this.cameraOff ? "Camera on" : "Camera off";
    $("btn-camera").setAttribute("aria-pressed", String(this.cameraOff));
    await this.send({ type: "mute", source: "camera", muted: this.cameraOff }).catch((e) => this.log(e.code));
    this.renderAll();
  }

  async toggleScreen() {
    if (!this.publisher) return;
    if (this.screenTrack) {
      this.stopScreen();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 10 } }, audio: false });
    } catch (err) {
      this.log(`screen share cancelled: ${err.message}`);
      return;
    }
    this.screenTrack = stream.getVideoTracks()[0];
    this.screenTrack.onended = () => this.stopScreen();
    if (this.screenTransceiver) {
      await this.screenTransceiver.sender.replaceTrack(this.screenTrack);
      this.screenTransceiver.direction = "sendonly";
    } else {
      this.addScreenTransceiver();
    }
    $("btn-screen").setAttribute("aria-pressed", "true");
    $("btn-screen").textContent = "Stop sharing";
    await this.negotiatePublisher();
    this.renderAll();
  }

  async stopScreen() {
    if (!this.screenTrack) return;
    this.screenTrack.onended = null;
    this.screenTrack.stop();
    this.screenTrack = null;
    if (this.screenTransceiver) {
      await this.screenTransceiver.sender.replaceTrack(null);
      this.screenTransceiver.direction = "inactive";
    }
    $("btn-screen").setAttribute("aria-pressed", "false");
    $("btn-screen").textContent = "Share screen";
    await this.negotiatePublisher();
    this.renderAll();
  }

  async toggleHand() {
    const raised = !this.handRaised;
    try {
      await this.send({ type: "hand", raised });
      this.handRaised = raised;
    } catch (err) {
      this.log(`hand: ${err.code}`);
    }
    $("btn-hand").setAttribute("aria-pressed", String(this.handRaised));
    $("btn-hand").textContent = this.handRaised ? "Lower hand" : "Raise hand";
    this.renderAll();
  }

  async react(emoji) {
    await this.send({ type: "reaction", emoji }).catch((e) => this.log(`reaction: ${e.code}`));
  }

  async chat(text) {
    try {
      await this.send({ type: "chat", text });
    } catch (err) {
      this.systemMessage(`Not sent: ${err.message}`);
    }
  }

  // --- rendering ---------------------------------------------------------------------------------
  /** Which remote tracks are live: mid -> {track, info}, from the subscriber's active transceivers. */
  remoteTracks() {
    const out = new Map();
    const pc = this.subscriber;
    if (!pc) return out;
    for (const t of pc.getTransceivers()) {
      const info = t.mid !== null ? this.trackMap.get(t.mid) : undefined;
      const active = t.currentDirection === "recvonly" || t.currentDirection === "sendrecv";
      if (info && active && this.participants.has(info.participant_id)) {
        out.set(t.mid, { track: t.receiver.track, info });
      }
    }
    return out;
  }

  renderAll() {
    const wanted = new Map(); // tile key -> {label, role, tracks, participant, local}
    if (this.you && this.state !== "left" && this.state !== "removed") {
      wanted.set("local:camera", {
        name: `${this.you.name} (you)`, role: this.you.role, local: true,
        tracks: this.localStream ? this.localStream.getVideoTracks() : [],
        hand: this.handRaised, micMuted: this.micMuted, cameraOff: this.cameraOff,
      });
      if (this.screenTrack) {
        wanted.set("local:screen", { name: "Your screen", role: "screen", local: true, tracks: [this.screenTrack] });
      }
    }
    for (const p of this.participants.values()) {
      const micTrack = (p.tracks || []).find((t) => t.source === "microphone");
      wanted.set(`${p.participant_id}:camera`, {
        name: p.name || p.identity, role: p.role, tracks: [], hand: p.hand_raised, speaking: p.speaking,
        micMuted: Boolean(micTrack?.muted),
      });
    }
    for (const { track, info } of this.remoteTracks().values()) {
      const source = info.source === "screen" ? "screen" : "camera";
      const key = `${info.participant_id}:${source}`;
      if (!wanted.has(key)) {
        const p = this.participants.get(info.participant_id);
        wanted.set(key, { name: `${p?.name || "?"}'s screen`, role: "screen", tracks: [] });
      }
      wanted.get(key).tracks.push(track);
    }
    const grid = $("grid");
    for (const [key, tile] of this.tiles) {
      if (!wanted.has(key)) {
        tile.el.remove();
        this.tiles.delete(key);
      }
    }
    for (const [key, spec] of wanted) {
      let tile = this.tiles.get(key);
      if (!tile) {
        const el = $("tile-template").content.firstElementChild.cloneNode(true);
        const video = el.querySelector("video");
        const stream = new MediaStream();
        video.srcObject = stream;
        if (spec.local) video.muted = true;
        el.dataset.key = key;
        tile = { el, video, stream };
        this.tiles.set(key, tile);
        grid.append(el);
        this.watchFrames(key, video);
      }
      const { el, stream, video } = tile;
      el.classList.toggle("local", Boolean(spec.local) && spec.role !== "screen");
      el.classList.toggle("screen", key.endsWith(":screen"));
      el.classList.toggle("speaking", Boolean(spec.speaking));
      el.classList.toggle("camera-off", Boolean(spec.cameraOff));
      el.querySelector(".name").textContent = spec.name;
      el.querySelector(".role").textContent = spec.role === "screen" ? "" : spec.role;
      el.querySelector(".hand").hidden = !spec.hand;
      el.querySelector(".mic-muted").hidden = !spec.micMuted;
      const ids = new Set(spec.tracks.map((t) => t.id));
      for (const t of stream.getTracks()) if (!ids.has(t.id)) stream.removeTrack(t);
      const have = new Set(stream.getTracks().map((t) => t.id));
      let changed = false;
      for (const t of spec.tracks) {
        if (!have.has(t.id)) {
          stream.addTrack(t);
          changed = true;
        }
      }
      if (changed) video.play().catch(() => {});
    }
  }

  /** Record when each remote tile shows a new frame, to measure the longest freeze (e.g. during a move). */
  watchFrames(key, video) {
    if (!video.requestVideoFrameCallback) return;
    const stat = { last: 0, maxGap: 0, frames: 0, first: 0 };
    this.frameStats.set(key, stat);
    const onFrame = (now) => {
      if (stat.last) stat.maxGap = Math.max(stat.maxGap, now - stat.last);
      if (!stat.first) stat.first = now; // ms since the page started loading
      stat.last = now;
      stat.frames += 1;
      if (this.tiles.get(key)?.video === video) video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  frameGaps() {
    const now = performance.now();
    const out = {};
    for (const [key, s] of this.frameStats) {
      out[key] = {
        frames: s.frames,
        maxGapMs: Math.round(s.maxGap),
        sinceLastMs: s.last ? Math.round(now - s.last) : null,
        firstFrameMs: s.first ? Math.round(s.first) : null,
      };
    }
    return out;
  }

  resetFrameGaps() {
    for (const s of this.frameStats.values()) s.maxGap = 0;
  }

  burst(key, emoji) {
    const tile = this.tiles.get(key);
    if (!tile || !emoji) return;
    const span = document.createElement("span");
    span.textContent = emoji;
    tile.el.querySelector(".reaction-burst").append(span);
    setTimeout(() => span.remove(), 2000);
  }

  chatMessage(from, text) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "from";
    who.textContent = from;
    li.append(who, document.createTextNode(text));
    this.appendMessage(li);
  }

  systemMessage(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    this.appendMessage(li);
  }

  appendMessage(li) {
    const list = $("messages");
    list.append(li);
    while (list.children.length > 500) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  log(text) {
    this.events.push({ at: Date.now(), ms: Math.round(performance.now()), text });
    if (this.events.length > 200) this.events.shift();
  }

  // --- test hook ---------------------------------------------------------------------------------
  /** Per remote participant and source: inbound RTP counters of the live subscriber tracks. */
  async stats() {
    const out = { participants: {}, remoteVideo: 0, remoteAudio: 0 };
    const pc = this.subscriber;
    if (!pc) return out;
    const live = this.remoteTracks();
    const byTrackId = new Map([...live].map(([mid, v]) => [v.track.id, mid]));
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.type !== "inbound-rtp") continue;
      const mid = s.mid !== undefined ? s.mid : byTrackId.get(s.trackIdentifier);
      const entry = mid !== undefined ? live.get(mid) : undefined;
      if (!entry) continue;
      const { participant_id: pid, source, kind } = entry.info;
      out.participants[pid] ??= {};
      out.participants[pid][source] = {
        kind,
        packetsReceived: s.packetsReceived || 0,
        bytesReceived: s.bytesReceived || 0,
        framesDecoded: s.framesDecoded || 0,
        totalSamplesReceived: s.totalSamplesReceived || 0,
      };
      if (kind === "video") out.remoteVideo += 1;
      else out.remoteAudio += 1;
    }
    return out;
  }
}

// ----------------------------------------------------------------------------------------------- boot

function main() {
  const params = new URLSearchParams(location.search);
  const roomId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
  const room = new Classroom({ token: params.get("token"), roomId, wsUrl });

  $("btn-mic").addEventListener("click", () => room.toggleMic());
  $("btn-camera").addEventListener("click", () => room.toggleCamera());
  $("btn-screen").addEventListener("click", () => room.toggleScreen());
  $("btn-hand").addEventListener("click", () => room.toggleHand());
  $("btn-ask").addEventListener("click", () => {
    const form = $("ask-form");
    form.hidden = !form.hidden;
    $("btn-ask").setAttribute("aria-pressed", String(!form.hidden));
    if (!form.hidden) $("ask-question").focus();
  });
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("ask-question").value.trim();
    const options = $("ask-options").value.split("\n").map((o) => o.trim()).filter(Boolean);
    const right = $("ask-correct").value ? Number($("ask-correct").value) - 1 : null;
    if (!question || options.length < 2 || options.length > 8) {
      room.systemMessage("A question needs 2 to 8 options");
      return;
    }
    if (right !== null && !(right >= 0 && right < options.length)) {
      room.systemMessage(`The right option must be between 1 and ${options.length}`);
      return;
    }
    room.ask(question, options, right);
    $("ask-form").reset();
    $("ask-form").hidden = true;
    $("btn-ask").setAttribute("aria-pressed", "false");
  });
  $("btn-leave").addEventListener("click", () => room.leave());
  $("btn-rejoin").addEventListener("click", () => room.rejoin());
  for (const button of document.querySelectorAll("button.reaction")) {
    button.addEventListener("click", () => room.react(button.dataset.emoji));
  }
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (text) room.chat(text);
    input.value = "";
  });
  window.addEventListener("pagehide", () => {
    try {
      if (room.socket && room.state === "joined") room.socket.send({ type: "leave" });
    } catch {
      // the socket is already gone; the session expires by itself
    }
  });

  window.classmesh = {
    get state() { return room.state; },
    get moves() { return room.moves; },
    frameGaps: () => room.frameGaps(),
    resetFrameGaps: () => room.resetFrameGaps(),
    get participantId() { return room.participantId; },
    get participants() { return [...room.participants.values()]; },
    get pcs() { return { publisher: room.publisher, subscriber: room.subscriber }; },
    get events() { return room.events; },
    stats: () => room.stats(),
    leave: () => room.leave(),
    rejoin: () => room.rejoin(),
    dropSocket: () => room.socket && room.socket.ws.close(4000, "test drop"),
  };
  room.start();
}

main();
