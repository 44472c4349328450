// Slack's <!date^EPOCH^FORMAT|fallback> tokens, written again in the browser's time zone, as each Slack
// client writes them for its reader. The server sends the epoch and the format on a <time> node
// (sandbox/tokens.py writes the same tokens in the server's zone, for the tests and as a fallback).
"use strict";

const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

function pad(n) {
  return String(n).padStart(2, "0");
}

function ordinal(day) {
  if (day % 100 >= 11 && day % 100 <= 13) return `${day}th`;
  return `${day}${{ 1: "st", 2: "nd", 3: "rd" }[day % 10] || "th"}`;
}

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

function ago(seconds) {
  const future = seconds < 0;
  seconds = Math.abs(Math.trunc(seconds));
  for (const [unit, size] of [["day", 86400], ["hour", 3600], ["minute", 60]]) {
    if (seconds >= size) {
      const n = Math.floor(seconds / size);
      const text = `${n} ${unit}${n === 1 ? "" : "s"}`;
      return future ? `in ${text}` : `${text} ago`;
    }
  }
  return "just now";
}

// One {token}, or null for a token Slack would not know.
function dateToken(name, at, now) {
  const m = at.getMonth();
  const formats = {
    date_num: `${at.getFullYear()}-${pad(m + 1)}-${pad(at.getDate())}`,
    date: `${MONTHS[m]} ${ordinal(at.getDate())}, ${at.getFullYear()}`,
    date_short: `${MONTHS[m].slice(0, 3)} ${at.getDate()}, ${at.getFullYear()}`,
    date_long: `${DAYS[at.getDay()]}, ${MONTHS[m]} ${ordinal(at.getDate())}, ${at.getFullYear()}`,
    time: `${pad(at.getHours())}:${pad(at.getMinutes())}`,
    time_secs: `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`,
  };
  if (name in formats) return formats[name];
  if (name.endsWith("_pretty") && name.slice(0, -7) in formats) {
    for (const [shift, word] of [[0, "today"], [-1, "yesterday"], [1, "tomorrow"]]) {
      const day = new Date(now.getFullYear(), now.getMonth(), now.getDate() + shift);
      if (sameDay(at, day)) return word;
    }
    return formats[name.slice(0, -7)];
  }
  if (name === "ago") return ago((now - at) / 1000);
  return null;
}

// A whole format, such as "{date_short_pretty} at {time}", for an epoch in seconds.
function formatDate(epoch, format, now = new Date()) {
  const at = new Date(Number(epoch) * 1000);
  if (Number.isNaN(at.getTime())) return null;
  return String(format).replace(/\{(\w+)\}/g, (whole, name) => dateToken(name, at, now) ?? whole);
}

function clock(epoch) {
  const at = new Date(Number(epoch) * 1000);
  return `${pad(at.getHours())}:${pad(at.getMinutes())}`;
}

window.slackDates = { formatDate, clock };
