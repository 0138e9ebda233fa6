"""Throwaway: where a scan's stored latency goes (shared transactions)."""
import asyncio, time, json, sys, collections
import buffer.store as store
import buffer.connection as connection
from bench import logs_to_stderr, private_broker
from bench.confirm_latency import latency

pc = time.perf_counter
marks = {}
cur = []
orig_append = store.Buffer.append_nowait
def append_nowait(self, event):
    f = orig_append(self, event)
    if event.device == "dock-1":
        marks[id(f)] = m = {"q": pc(), "keep": f}
        f.add_done_callback(lambda _f, m=m: m.__setitem__("res", pc()))
    return f
store.Buffer.append_nowait = append_nowait
orig_insert = store.Buffer._insert
async def _insert(self, batch, now, first_rowid):
    scans = [marks.get(id(i.future)) for i in batch]
    scans = [m for m in scans if m]
    for m in scans: m["c0"] = pc(); m["batch"] = len(batch)
    cur[:] = scans
    r = await orig_insert(self, batch, now, first_rowid)
    for m in scans: m["done"] = pc()
    return r
store.Buffer._insert = _insert
tx = []
orig_run = connection.run_in_one_transaction
def run(conn, writes):
    t0 = pc()
    names = tuple(getattr(getattr(w.fn, "func", w.fn), "__name__", "?") for w in writes)
    scan = any(getattr(w.fn, "func", None) is store._insert_rows for w in writes) and bool(cur)
    for m in (cur if scan else []): m["t_start"] = t0
    r = orig_run(conn, writes)
    t1 = pc()
    for m in (cur if scan else []): m["t_end"] = t1; m["tx"] = names
    tx.append((names, t1 - t0))
    return r
connection.run_in_one_transaction = run

async def main():
    with private_broker() as (root, broker):
        res = await latency(root, broker, int(sys.argv[1]), "stored", load=500)
    print(json.dumps(res), file=sys.stderr)
    rows = [m for m in marks.values() if "t_end" in m and "res" in m]
    rows.sort(key=lambda m: m["res"] - m["q"])
    def stats(sel, label):
        n = len(sel)
        avg = lambda k1, k2: sum((m[k2] - m[k1]) for m in sel) / n * 1000
        print(label, n, "q->c0 %.2f c0->thread %.2f thread %.2f ->done %.2f done->res %.2f total %.2f" % (
            avg("q","c0"), avg("c0","t_start"), avg("t_start","t_end"), avg("t_end","done"), avg("done","res"), avg("q","res")))
    stats(rows, "all")
    stats(rows[len(rows)//2 - 10: len(rows)//2 + 10], "mid")
    stats(rows[-len(rows)//50:], "top2%")
    for m in rows[-8:]:
        print(" slow: total %.2f c0->thread %.2f thread %.2f ->done %.2f %s" % ((m["res"]-m["q"])*1000, (m["t_start"]-m["c0"])*1000, (m["t_end"]-m["t_start"])*1000, (m["done"]-m["t_end"])*1000, m["tx"]))
    agg = collections.defaultdict(lambda: [0, 0.0])
    for names, d in tx:
        a = agg[names]; a[0] += 1; a[1] += d
    for names, (n, d) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:10]:
        print("%6d %.3fms %s" % (n, d / n * 1000, names))
logs_to_stderr()
asyncio.run(main())
