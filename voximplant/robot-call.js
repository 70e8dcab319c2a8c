/*
 * hotlead robot call: a VoxEngine scenario (upload to VoxImplant as it is).
 *
 * hotlead starts it with the Management API's StartScenarios (rule_id + script_custom_data).
 * Custom data (<= 200 bytes, compact JSON) carries:
 *   phone    digits of the E.164 number, no '+'
 *   attempt  hotlead's attempt id (opaque, echoed back)
 *   token    the attempt's secret (echoed back, never logged)
 *   n        optional customer name for the greeting
 *
 * The scenario dials the number with answering-machine detection, plays the recording
 * (or speaks the text) to a person and hangs up, hangs up on a machine, and posts the
 * outcome as JSON to POST <PUBLIC_URL>/v1/calls/result:
 *   {attempt, token, outcome, code, reason, duration, session_id}
 * retrying the post a few times; only then the session is terminated.
 *
 * Outcomes (see hotlead's DESIGN.md, POST /v1/calls/result):
 *   answered        a person picked up; code 200; reason message_played,
 *                   hangup_during_message, or tts_after_playback_error (the recording
 *                   failed and the text was spoken instead); if the text cannot be
 *                   spoken either: failed, reason playback_error (nobody heard anything)
 *   voicemail       AMD heard an answering machine; the call is hung up
 *   no_answer       SIP 480 / 408 / 487, ringing longer than RING_TIMEOUT_S, or the
 *                   callee hung up before the message started (hangup_before_message)
 *   busy            SIP 486 busy here, 600 busy everywhere, 603 declined
 *   unavailable     SIP 503 (network cannot reach the subscriber)
 *   invalid_number  SIP 404 / 484 / 410 / 604: the number does not exist
 *   failed          anything else; SIP 402 (VoxImplant account out of money) is
 *                   failed with reason "money" so hotlead can tell it apart;
 *                   broken custom data is failed with reason "bad_custom_data"
 *
 * Written for VoxEngine's JavaScript and kept free of anything else so that it also
 * runs in a Node `vm` context under the fakes in hotlead's test/voximplant-scenario.test.ts.
 */

require(Modules.AMD);

// ----------------------------------------------------------------- settings
// Edit these before uploading. Nothing secret lives here: the per-call token comes
// in the custom data.

/** Where hotlead is reachable from VoxImplant (hotlead's PUBLIC_URL, no trailing slash). */
const PUBLIC_URL = 'https://hotlead.example.com';
const CALLBACK_URL = PUBLIC_URL + '/v1/calls/result';

/** Caller id shown to the customer: a number rented in or verified with VoxImplant (digits). */
const CALLER_ID = '74950000000';

/**
 * An mp3/wav URL to play to a person. Empty: SPEAK_TEXT is spoken with VOICE instead.
 * If the recording cannot be played (broken URL, unreachable host), the text is spoken.
 */
const RECORDING_URL = '';
/** Spoken when the custom data has a name; {name} is replaced by it. */
const SPEAK_TEXT_NAMED = 'Здравствуйте, {name}! Спасибо за заказ. Наш менеджер скоро вам перезвонит. До свидания!';
/** Spoken without a name. */
const SPEAK_TEXT = 'Здравствуйте! Спасибо за заказ. Наш менеджер скоро вам перезвонит. До свидания!';
/**
 * TTS voice, a path inside VoiceList, e.g. 'YandexV3.ru_RU_alena' (Yandex neural, Russian
 * female). It must exist in VoxEngine's current VoiceList: a path that does not resolve is
 * logged loudly and VoxEngine's default voice (an English Amazon voice) is used instead.
 * Empty: the default voice, on purpose.
 */
const VOICE = 'YandexV3.ru_RU_alena';

/** AMD model, a key of AMD.Model (RU, KZ, US, EU_GENERAL...). Empty: no answering-machine detection. */
const AMD_MODEL = 'RU';
/** How long AMD may listen after the callee answers (VoxImplant allows 0-20000, default 6500). */
const AMD_TIMEOUT_MS = 6500;

/** Give up ringing after this many seconds (outcome no_answer, reason ring_timeout). */
const RING_TIMEOUT_S = 45;
/** Hang up a connected call after this many seconds whatever happens. */
const MAX_CALL_S = 120;

/** Result post: attempts in all, the pauses between them, and each request's timeout (s). */
const POST_ATTEMPTS = 4;
const POST_BACKOFF_MS = [1000, 3000, 9000];
const POST_TIMEOUT_S = 8;

// ----------------------------------------------------------------- state

const FAILURE_OUTCOMES = {
  486: 'busy',
  600: 'busy',
  603: 'busy',
  480: 'no_answer',
  408: 'no_answer',
  487: 'no_answer',
  503: 'unavailable',
  404: 'invalid_number',
  484: 'invalid_number',
  410: 'invalid_number',
  604: 'invalid_number',
  402: 'failed',
};

let data = null; // {phone, attempt, token, name}
let sessionId;
let call = null;
let amd = null;
let amdUsable = false;
let earlyVerdict = null; // an AMD verdict that arrived before Connected
let connectedAt = 0;
let duration;
let messageStarted = false;
let spoken = false; // the text (not the recording) is what is playing
let voice; // resolved VOICE, or undefined for VoxEngine's default
let result = null; // {outcome, code, reason}
let reported = false;
let delivered = false;
let terminatingByUs = false;
const timers = {};

function log(msg) {
  Logger.write('[hotlead] ' + msg);
}

function maskPhone(phone) {
  return phone.length <= 6 ? '***' : phone.slice(0, 4) + '*'.repeat(phone.length - 6) + phone.slice(-2);
}

function setTimer(name, ms, fn) {
  clearTimer(name);
  timers[name] = setTimeout(function () {
    delete timers[name];
    fn();
  }, ms);
}

function clearTimer(name) {
  if (timers[name] !== undefined) {
    clearTimeout(timers[name]);
    delete timers[name];
  }
}

function clearAllTimers() {
  Object.keys(timers).forEach(clearTimer);
}

// ----------------------------------------------------------------- custom data

function readCustomData() {
  let obj;
  try {
    obj = JSON.parse(VoxEngine.customData());
  } catch (e) {
    return { error: 'custom data is not JSON' };
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return { error: 'custom data is not an object' };
  const attempt = typeof obj.attempt === 'string' && obj.attempt !== '' ? obj.attempt : null;
  const token = typeof obj.token === 'string' && obj.token !== '' ? obj.token : null;
  if (attempt === null || token === null) return { error: 'custom data has no attempt or token' };
  const phone = typeof obj.phone === 'string' && /^[1-9][0-9]{0,14}$/.test(obj.phone) ? obj.phone : null;
  if (phone === null) return { error: 'custom data has no usable phone', attempt: attempt, token: token };
  const name = typeof obj.n === 'string' ? obj.n.replace(/\s+/g, ' ').trim() : '';
  return { phone: phone, attempt: attempt, token: token, name: name };
}

// ----------------------------------------------------------------- result

function decide(outcome, code, reason) {
  if (result !== null) return;
  result = { outcome: outcome, code: code, reason: reason };
  log('outcome ' + outcome + (code !== undefined ? ' code ' + code : '') + (reason ? ' (' + reason + ')' : ''));
}

function resultBody() {
  const r = result || { outcome: 'failed', reason: 'no_result' };
  let seconds = duration;
  if (seconds === undefined) seconds = connectedAt > 0 ? Math.max(0, Math.round((Date.now() - connectedAt) / 1000)) : 0;
  return {
    attempt: data.attempt,
    token: data.token,
    outcome: r.outcome,
    code: r.code,
    reason: r.reason,
    duration: seconds,
    session_id: sessionId,
  };
}

function retryable(code) {
  return !(code > 0) || code === 408 || code === 425 || code === 429 || code >= 500;
}

function finish() {
  clearAllTimers();
  terminatingByUs = true;
  VoxEngine.terminate();
}

function post(body, attemptNo) {
  const payload = JSON.stringify(body);
  let request;
  try {
    request = Net.httpRequestAsync(CALLBACK_URL, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      postData: payload,
      timeout: POST_TIMEOUT_S,
    });
  } catch (e) {
    request = Promise.resolve({ code: -1, error: String(e) });
  }
  request
    .then(
      function (res) {
        return res || { code: -1, error: 'no response' };
      },
      function (e) {
        return { code: -1, error: String(e) };
      },
    )
    .then(function (res) {
      const code = Number(res.code);
      if (code >= 200 && code < 300) {
        delivered = true;
        log('result delivered (attempt ' + attemptNo + ')');
        finish();
        return;
      }
      const why = 'HTTP ' + code + (res.error ? ' ' + res.error : '');
      if (retryable(code) && attemptNo < POST_ATTEMPTS) {
        const pause = POST_BACKOFF_MS[Math.min(attemptNo - 1, POST_BACKOFF_MS.length - 1)];
        log('result post ' + attemptNo + ' failed (' + why + '), retrying in ' + pause + ' ms');
        setTimer('post', pause, function () {
          post(body, attemptNo + 1);
        });
        return;
      }
      log('result post gave up after ' + attemptNo + ' attempt(s): ' + why);
      finish();
    });
}

function report() {
  if (reported || data === null) return;
  reported = true;
  clearAllTimers();
  post(resultBody(), 1);
}

// ----------------------------------------------------------------- call

function resolveVoice() {
  if (VOICE === '') return undefined;
  let v = typeof VoiceList === 'undefined' ? undefined : VoiceList;
  const parts = VOICE.split('.');
  for (let i = 0; i < parts.length && v !== null && v !== undefined; i++) v = v[parts[i]];
  if (v === null || v === undefined) {
    log('WARNING: VOICE ' + VOICE + ' is not in VoiceList; speaking with the default (English) voice. Fix VOICE in robot-call.js');
    return undefined;
  }
  return v;
}

function messageText() {
  return data.name !== '' ? SPEAK_TEXT_NAMED.split('{name}').join(data.name) : SPEAK_TEXT;
}

function speak() {
  spoken = true;
  // CallSayParameters: `voice` picks the TTS voice (there is no `language` parameter).
  if (voice !== undefined) call.say(messageText(), { voice: voice });
  else call.say(messageText());
}

function createAmd() {
  if (AMD_MODEL === '' || typeof AMD === 'undefined') return null;
  try {
    const model = AMD.Model[AMD_MODEL];
    if (model === undefined) {
      log('unknown AMD model ' + AMD_MODEL + ', calling without detection');
      return null;
    }
    return AMD.create({ model: model, timeout: AMD_TIMEOUT_MS });
  } catch (e) {
    log('AMD unavailable (' + e + '), calling without detection');
    return null;
  }
}

function hangupAndReport() {
  try {
    call.hangup();
  } catch (e) {
    log('hangup failed: ' + e);
  }
  // Disconnected (or Failed) normally reports; this covers a platform that sends neither.
  setTimer('report', 5000, report);
}

function startMessage() {
  if (messageStarted || result !== null) return;
  messageStarted = true;
  clearTimer('amd');
  if (RECORDING_URL !== '') call.startPlayback(RECORDING_URL);
  else speak();
}

function onConnected() {
  clearTimer('ring');
  connectedAt = Date.now();
  setTimer('max', MAX_CALL_S * 1000, function () {
    decide(messageStarted ? 'answered' : 'no_answer', messageStarted ? 200 : undefined, 'max_duration');
    hangupAndReport();
  });
  if (!amdUsable) {
    startMessage();
    return;
  }
  if (earlyVerdict !== null) {
    onAmdComplete(earlyVerdict);
    return;
  }
  // AMD answers within its timeout; if it stays silent, assume a person.
  setTimer('amd', AMD_TIMEOUT_MS + 3000, function () {
    log('AMD gave no verdict, treating the callee as a person');
    startMessage();
  });
}

function onAmdComplete(e) {
  if (connectedAt === 0) {
    // Cannot speak to a call that is not connected yet: act on it at Connected.
    earlyVerdict = e || {};
    return;
  }
  clearTimer('amd');
  if (messageStarted || result !== null) return;
  const verdict = e && e.resultClass;
  log('AMD ' + verdict + (e && e.confidence !== undefined ? ' (' + e.confidence + '%)' : ''));
  if (verdict === AMD.ResultClass.VOICEMAIL) {
    decide('voicemail', undefined, 'amd_voicemail');
    hangupAndReport();
  } else if (verdict === AMD.ResultClass.CALL_ENDED) {
    // The callee hung up while AMD listened; Disconnected reports it.
  } else {
    // HUMAN, or TIMEOUT (silence is more often a person than a machine).
    startMessage();
  }
}

function onAmdError(e) {
  log('AMD error: ' + (e && e.message));
  amdUsable = false;
  if (connectedAt > 0) startMessage();
}

function onPlaybackFinished(e) {
  if (!messageStarted || result !== null) return;
  const error = e && e.error;
  if (error && !spoken) {
    // The customer heard nothing of the recording: say the text instead.
    log('recording could not be played (' + error + '), speaking the text instead');
    try {
      speak();
      return;
    } catch (err) {
      log('the text could not be spoken either (' + err + ')');
    }
  }
  if (error) {
    log('the text could not be spoken (' + error + ')');
    decide('failed', undefined, 'playback_error');
  } else {
    decide('answered', 200, RECORDING_URL !== '' && spoken ? 'tts_after_playback_error' : 'message_played');
  }
  hangupAndReport();
}

function onFailed(e) {
  clearTimer('ring');
  const code = e && typeof e.code === 'number' ? e.code : undefined;
  const outcome = (code !== undefined && FAILURE_OUTCOMES[code]) || 'failed';
  const reason = code === 402 ? 'money' : (e && e.reason) || undefined;
  decide(outcome, code, reason);
  duration = 0;
  report();
}

function onDisconnected(e) {
  if (e && typeof e.duration === 'number') duration = e.duration;
  if (messageStarted) decide('answered', 200, 'hangup_during_message');
  else decide('no_answer', undefined, 'hangup_before_message');
  report();
}

function onRingTimeout() {
  if (connectedAt > 0) return;
  decide('no_answer', 408, 'ring_timeout');
  hangupAndReport();
}

// ----------------------------------------------------------------- session

VoxEngine.addEventListener(AppEvents.Started, function (e) {
  sessionId = e && e.sessionId !== undefined && e.sessionId !== null ? String(e.sessionId) : undefined;
  const parsed = readCustomData();
  if (parsed.error) {
    log(parsed.error);
    if (parsed.attempt && parsed.token) {
      data = { attempt: parsed.attempt, token: parsed.token, phone: '', name: '' };
      decide('failed', undefined, 'bad_custom_data');
      report();
    } else {
      // Without attempt and token nobody can be told; hotlead's CALLBACK_TIMEOUT catches it.
      finish();
    }
    return;
  }
  data = parsed;
  log('calling ' + maskPhone(data.phone) + ' for attempt ' + data.attempt);
  voice = resolveVoice(); // also needed with a recording: the text is the fallback

  amd = createAmd();
  amdUsable = amd !== null;
  call = VoxEngine.callPSTN(data.phone, CALLER_ID, amd !== null ? { amd: amd } : {});
  call.addEventListener(CallEvents.Connected, onConnected);
  call.addEventListener(CallEvents.Failed, onFailed);
  call.addEventListener(CallEvents.Disconnected, onDisconnected);
  call.addEventListener(CallEvents.PlaybackFinished, onPlaybackFinished);
  if (amd !== null) {
    amd.addEventListener(AMD.Events.DetectionComplete, onAmdComplete);
    amd.addEventListener(AMD.Events.DetectionError, onAmdError);
  }
  setTimer('ring', RING_TIMEOUT_S * 1000, onRingTimeout);
});

// VoxEngine may end the session on its own (limits, an administrator). One HTTP request
// is still allowed here: a last chance to tell hotlead what happened.
VoxEngine.addEventListener(AppEvents.Terminating, function () {
  if (terminatingByUs || delivered || data === null) return;
  decide('failed', undefined, 'session_terminated');
  try {
    Net.httpRequestAsync(CALLBACK_URL, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      postData: JSON.stringify(resultBody()),
      timeout: POST_TIMEOUT_S,
    });
  } catch (e) {
    log('last-chance post failed: ' + e);
  }
});
