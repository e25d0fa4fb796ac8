-- wrk script: like post.lua (whose headers and done() it takes), but every request carries an
-- event id of its own, signed, so that a source with dedupe on forwards every one of them.
--   BENCH_BODY_FILE    the body; its first "id":"…" value (16 characters) is replaced by the
--                      request's number, zero-padded to 16 digits
--   BENCH_SIGS_FILE    the signature of each such body, line i for id i - 1 (made by
--                      common.sh's unique_signatures)
--   BENCH_THREADS      wrk's -t (default 2): each thread sends its own share of the ids in
--                      turn, and from its first again once it has sent them all
--   BENCH_STATE_FILE   optional: where each thread's last id is kept, so that the next run
--                      goes on from there (an id then comes back only after all the others:
--                      with twice dedupe's capacity of ids or more, never as a duplicate)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "post.lua")

local state = os.getenv("BENCH_STATE_FILE")
local resumed = {}
local f = state and io.open(state)
if f then
  for line in f:lines() do resumed[#resumed + 1] = tonumber(line) end
  f:close()
end

local threads = {}
function setup(thread)
  thread:set("index", #threads)
  thread:set("resume", resumed[#threads + 1] or 0)
  threads[#threads + 1] = thread
end

local prefix, suffix, sigs, first, last
function init(args)
  local at = assert(wrk.body:find('"id":"', 1, true), 'no "id" in the body')
  prefix = wrk.body:sub(1, at + 5)
  suffix = wrk.body:sub(at + 6 + 16)
  sigs = {}
  for line in io.lines(os.getenv("BENCH_SIGS_FILE")) do sigs[#sigs + 1] = line end
  local share = math.floor(#sigs / tonumber(os.getenv("BENCH_THREADS") or "2"))
  first = index * share + 1
  last = first + share - 1
  n = (resume >= first and resume <= last) and resume or first - 1
end

function request()
  n = n + 1
  if n > last then n = first end
  wrk.headers["x-protocol-signature"] = sigs[n]
  return wrk.format(nil, nil, nil, prefix .. string.format("%016d", n - 1) .. suffix)
end

local post_done = done
function done(summary, latency, requests)
  post_done(summary, latency, requests)
  local out = state and io.open(state, "w")
  if out then
    for _, thread in ipairs(threads) do out:write(tostring(thread:get("n")), "\n") end
    out:close()
  end
end
