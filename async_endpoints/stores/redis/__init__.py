"""``RedisStore``: the job store every process of a deployment shares through Redis.

Each state transition is one Lua script (``stores/redis/lua/<method>.lua``, preceded by
the functions they share, ``_prelude.lua``), registered once per store and run by SHA
(redis-py reloads it on ``NOSCRIPT``). The caller's
clock arrives in ``ARGV`` as ``now`` for the times a job shows; the instants that
decide between processes (due scores, lease ends, heartbeats) arrive as ``now``
plus the process's measured offset to Redis ``TIME`` (``clock.lua``), so they are
on Redis's clock.

Key layout (``P`` is the prefix; the braces make ``{P}`` a Redis Cluster hash tag,
so every key of one prefix lives in one slot)::

    {P}:job:<uuid>       hash    one job (fields below); finished jobs carry an
                                 EXPIRE of ceil(ttl) seconds
    {P}:ready            zset    waiting (Queued and Scheduled) job ids, scored by
                                 due time (epoch seconds, Redis's clock), or, once
                                 due, by a fair-claims tag (tag - 1e12, below
                                 every time): see claim.lua
    {P}:fair             zset    'v' scored by the latest claimed tag,
                                 'o:<owner>' by the owner's latest tag (round
                                 robin)
    {P}:claimed          zset    InProgress job ids, scored by lease end (Redis's
                                 clock)
    {P}:wake             list    wake-up tokens for idle workers (BLPOP): at most 64,
                                 cut to 32 when a push passes 64 (one LTRIM per
                                 32 pushes while no worker is idle)
    {P}:idem:<key>       string  "<job uuid>:<fingerprint>", PX = the key's ttl
    {P}:req:<id>         string  the job ids one claim request took ("id,id" or,
                                 for a sweep, "i=id,i=id"), PX = the lease, or
                                 until one of its jobs completes: a request sent
                                 again answers with them
    {P}:workers          hash    live worker name -> last heartbeat

and three kinds of Pub/Sub channels (not keys): ``{P}:ended:<uuid>``, told when
the job ends while somebody waits for that (long polls), ``{P}:cancels``, told
the id of a running job whose cancellation was requested (every worker process
listens), and ``{P}:events``, told each change of a job somebody follows (event
streams).

Key names are built in Python by ``_Keys`` and passed in ``KEYS``, except the
names a script learns only inside its atomic step (a job id, a job's status,
handler or owner): for those it receives the tagged prefix (``{P}:job:``,
``{P}:ix:s:``, ``{P}:ix:n:``...) as a key and appends to it. The three scripts
every job runs (submit, claim, complete) get only ``{P}:`` and name all their
keys from it, the same names as ``_Keys``: each argument costs the client time
to encode, and these run thousands of times a second. (On a Cluster they also
get the names, which Redis needs to route them right while a slot moves.) Every
key shares the hash tag, hence the slot. No script calls ``KEYS`` or ``SCAN``.

Job hash fields are short, and a field is absent when its value is ``None`` (or an
empty mapping), to keep a finished job small (a few hundred bytes, listpack)::

    n  name            s  status (JobStatus value)   m  max_retries
    a  retry_count     c  created_at                 u  last_updated_at (1)
    b  started_at      e  completed_at               d  due_at (waiting only)
    p  payload (JSON)  h  headers (JSON)             rp route_params (JSON)
    qp query_params    o  owner                      r  result (JSON)
    x  error (JSON [type, message, stack_trace])
    g  progress (JSON [fraction, message])
    k  "1" once cancellation was requested
    hb hand-backs in a row (absent: none)
    lp "1" while somebody waits for the job's end (its end is PUBLISHed then)
    ev "1" once somebody follows the job's events (its changes are PUBLISHed)
    lt "c" or "f" and the first 8 characters of the token whose complete or
       fail applied last (answers a re-send of that call)
    t  claim token     w  claiming worker            (InProgress only)

(1) not kept once the job has finished: its last update is then its end, e.

Times are ``repr(float)`` strings, so they read back exactly. Values are JSON, never
pickle.

Deployments: a single Redis (``redis://``, ``rediss://``, ``unix://``), Sentinel
(``redis+sentinel://``: a ``redis.Redis`` on a ``SentinelConnectionPool``, which asks
the sentinels for the master on every new connection) or Cluster
(``redis+cluster://``: a ``redis.cluster.RedisCluster``, which routes each command,
EVALSHA included, by its keys' slot; all keys of one prefix share one slot). The
Cluster client is made on first use, because redis-py's connects at construction:
like the other URLs, opening the store contacts no server.
"""

from async_endpoints.stores.redis.store import RedisStore

__all__ = ["RedisStore"]
