package metrics

import (
	"github.com/nbdd/nbdd/ksm"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector is a prometheus.Collector that reads Server.Stats, the
// budget and the KSM throttler at each scrape. The budget's and the
// throttler's metrics are described, and collected, only when Config
// has them.
type Collector struct {
	cfg Config
}

// NewCollector returns the Collector of cfg.
func NewCollector(cfg Config) *Collector { return &Collector{cfg: cfg} }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The server's metrics. Each counter is cumulative since the server
// started; nbdd_connections and the buffer and budget figures are gauges.
var (
	connsOpen     = desc("nbdd_connections", "Connections open now, in the handshake or the transmission phase.")
	connsAccepted = desc("nbdd_connections_accepted_total", "Connections accepted and served (those refused at once excluded).")
	connsRefused  = desc("nbdd_connections_refused_total", "Connections closed at once: over --max-connections or --max-connections-per-host (reason=limit), or an address --allow does not list (reason=address).", "reason")
	exportRefused = desc("nbdd_export_access_refused_total", "Export selections (NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME) refused by an export's allow lists.")

	exportConns  = desc("nbdd_export_connections_total", "Connections that entered the transmission phase with the export.", "export")
	requests     = desc("nbdd_requests_total", "Requests read, by command, whether they succeeded, failed or were refused (NBD_CMD_DISC excluded; command=unknown: commands the server does not know).", "export", "command")
	requestErrs  = desc("nbdd_request_errors_total", "Error replies, by NBD errno (proto.md \"Error values\").", "export", "errno")
	readBytes    = desc("nbdd_read_bytes_total", "Payload bytes of successful READs.", "export")
	writtenBytes = desc("nbdd_written_bytes_total", "Payload bytes of successful WRITEs.", "export")
	holeBytes    = desc("nbdd_read_hole_bytes_total", "Bytes of successful READs sent as holes (NBD_REPLY_TYPE_OFFSET_HOLE): counted in nbdd_read_bytes_total, never sent.", "export")
	aborted      = desc("nbdd_read_aborts_total", "READs cut off by a hard disconnect: the backend failed after a simple reply's header had gone out.", "export")
	pathRequests = desc("nbdd_path_requests_total", "READs and WRITEs by the path their data took between socket and backend (docs/architecture.md).", "export", "path")
	pathBytes    = desc("nbdd_path_bytes_total", "Payload bytes of the successful READs and WRITEs that took each path.", "export", "path")
	pathOnReader = desc("nbdd_path_on_reader_total", "READs and WRITEs that the connection's reading goroutine ran itself, by path.", "export", "path")
	latency      = desc("nbdd_request_duration_seconds", "Time from a request's header being read to its reply being written, by command (requests whose reply was never written excluded).", "export", "command")

	bufStrategy  = desc("nbdd_buffer_strategy_info", "Always 1; the label names the buffer strategy (--strategy).", "strategy")
	bufHeld      = desc("nbdd_buffer_held_bytes", "Request buffer bytes allocated and retained, in use or idle.")
	bufInUse     = desc("nbdd_buffer_in_use_bytes", "Request buffer bytes handed out to requests now.")
	bufIdle      = desc("nbdd_buffer_idle_bytes", "Request buffer bytes retained while no request uses them.")
	bufAllocs    = desc("nbdd_buffer_allocations_total", "Request buffers allocated.")
	bufHits      = desc("nbdd_buffer_reuses_total", "Request buffers handed out from those retained, without an allocation.")
	bufReclaimed = desc("nbdd_buffer_reclaimed_bytes_total", "Idle buffer bytes the reclaimer let go.")
	bufWaits     = desc("nbdd_buffer_budget_waits_total", "Buffer requests that had to wait for the memory budget.")
	budgetLimit  = desc("nbdd_memory_budget_bytes", "The memory budget (--memory-budget): request buffer bytes that may be handed out at once.")
	budgetInUse  = desc("nbdd_memory_budget_in_use_bytes", "Bytes of the memory budget handed out now.")
	budgetWaitQ  = desc("nbdd_memory_budget_waiting", "Buffer requests waiting for the memory budget now.")
)

// The KSM throttler's metrics (ksm.Status; Documentation/admin-guide/mm/ksm.rst).
var (
	ksmState        = desc("nbdd_ksm_state", "1 for the throttler's current state (idle, aggressive, standard, slow), 0 for the others.", "state")
	ksmSince        = desc("nbdd_ksm_state_since_seconds", "When the current state began, in seconds since the Unix epoch.")
	ksmShared       = desc("nbdd_ksm_pages_shared", "KSM pages in use, host-wide (pages_shared).")
	ksmSharing      = desc("nbdd_ksm_pages_sharing", "Further sites sharing them: pages saved, host-wide (pages_sharing).")
	ksmUnshared     = desc("nbdd_ksm_pages_unshared", "Unique pages checked repeatedly for merging, host-wide (pages_unshared).")
	ksmVolatile     = desc("nbdd_ksm_pages_volatile", "Pages changing too fast to merge, host-wide (pages_volatile).")
	ksmScanned      = desc("nbdd_ksm_pages_scanned_total", "Pages ksmd scanned since boot, host-wide (pages_scanned).")
	ksmFullScans    = desc("nbdd_ksm_full_scans_total", "Complete scans of the mergeable memory since boot, host-wide (full_scans).")
	ksmProfit       = desc("nbdd_ksm_general_profit_bytes", "Bytes KSM saves host-wide, less its own overhead (general_profit; may be negative).")
	ksmMerging      = desc("nbdd_ksm_process_merging_pages", "Pages of this process merged (ksm_merging_pages of /proc/self/ksm_stat).")
	ksmExportMerged = desc("nbdd_ksm_export_merged_bytes", "Bytes of an export's memory merged by KSM (the \"KSM:\" lines of /proc/self/smaps).", "export")
)

// Describe sends the descriptors of every metric the Collector may
// report.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connsOpen, connsAccepted, connsRefused, exportRefused,
		exportConns, requests, requestErrs, readBytes, writtenBytes, holeBytes, aborted,
		pathRequests, pathBytes, pathOnReader, latency,
		bufStrategy, bufHeld, bufInUse, bufIdle, bufAllocs, bufHits, bufReclaimed, bufWaits} {
		ch <- d
	}
	if c.cfg.Budget != nil {
		ch <- budgetLimit
		ch <- budgetInUse
		ch <- budgetWaitQ
	}
	if c.cfg.KSM != nil {
		for _, d := range []*prometheus.Desc{ksmState, ksmSince, ksmShared, ksmSharing, ksmUnshared,
			ksmVolatile, ksmScanned, ksmFullScans, ksmProfit, ksmMerging, ksmExportMerged} {
			ch <- d
		}
	}
}

// Collect reads the server's Stats, and the budget and KSM throttler if
// configured, and sends them as metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	m := emitter{ch}
	if c.cfg.Server != nil {
		collectServer(m, c.cfg.Server.Stats())
	}
	if b := c.cfg.Budget; b != nil {
		m.gauge(budgetLimit, float64(b.Size()))
		m.gauge(budgetInUse, float64(b.InUse()))
		m.gauge(budgetWaitQ, float64(b.Waiting()))
	}
	if c.cfg.KSM != nil {
		collectKSM(m, c.cfg.KSM.Status())
	}
}

func collectServer(m emitter, st server.Stats) {
	m.gauge(connsOpen, float64(st.Conns))
	m.counter(connsAccepted, st.Accepted)
	m.counter(connsRefused, st.RefusedLimit, "limit")
	m.counter(connsRefused, st.RefusedAddr, "address")
	m.counter(exportRefused, st.RefusedExport)
	for _, es := range st.Exports {
		collectExport(m, es)
	}
	collectBuffers(m, st)
}

// emitter sends const metrics; the descriptors above are valid, so
// MustNewConstMetric cannot panic for them.
type emitter struct{ ch chan<- prometheus.Metric }

func (m emitter) counter(d *prometheus.Desc, v int64, labels ...string) {
	m.ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func (m emitter) gauge(d *prometheus.Desc, v float64, labels ...string) {
	m.ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func collectExport(m emitter, es server.ExportStats) {
	name := es.Name
	m.counter(exportConns, es.Conns, name)
	for cmd, n := range es.Requests {
		m.counter(requests, n, name, cmd.String())
	}
	m.counter(requests, es.UnknownCmds, name, "unknown")
	for errno, n := range es.Errors {
		m.counter(requestErrs, n, name, errno.String())
	}
	m.counter(readBytes, es.ReadBytes, name)
	m.counter(writtenBytes, es.WriteBytes, name)
	m.counter(holeBytes, es.HoleBytes, name)
	m.counter(aborted, es.Aborted, name)
	for p, ps := range es.Paths {
		m.counter(pathRequests, ps.Requests, name, p.String())
		m.counter(pathBytes, ps.Bytes, name, p.String())
		m.counter(pathOnReader, ps.OnReader, name, p.String())
	}
	for cmd, l := range es.Latency {
		if l.Count() > 0 { // a histogram costs 26 series: only for commands seen
			m.ch <- latencyHistogram(name, cmd, l)
		}
	}
}

// bounds are the latency buckets' upper bounds in seconds.
var bounds = func() (b [server.LatencyBuckets]float64) {
	for i := range b {
		b[i] = server.LatencyBound(i).Seconds()
	}
	return b
}()

// latencyHistogram turns l into a Prometheus histogram, whose buckets
// count cumulatively.
func latencyHistogram(export string, cmd protocol.Cmd, l server.LatencyStats) prometheus.Metric {
	buckets := make(map[float64]uint64, len(bounds))
	var n uint64
	for i, le := range bounds {
		n += uint64(l.Counts[i])
		buckets[le] = n
	}
	n += uint64(l.Counts[len(bounds)])
	return prometheus.MustNewConstHistogram(latency, n, l.Sum.Seconds(), buckets, export, cmd.String())
}

func collectBuffers(m emitter, st server.Stats) {
	b := st.Buffers
	m.gauge(bufStrategy, 1, b.Strategy)
	m.gauge(bufHeld, float64(b.BytesHeld))
	m.gauge(bufInUse, float64(b.BytesInUse))
	m.gauge(bufIdle, float64(b.BytesIdle))
	m.counter(bufAllocs, b.Allocs)
	m.counter(bufHits, b.Hits)
	m.counter(bufReclaimed, b.Reclaimed)
	m.counter(bufWaits, b.BudgetWaits)
}

func collectKSM(m emitter, s ksm.Status) {
	for st := ksm.Idle; st <= ksm.Slow; st++ {
		v := 0.0
		if st == s.State {
			v = 1
		}
		m.gauge(ksmState, v, st.String())
	}
	if !s.Since.IsZero() {
		m.gauge(ksmSince, float64(s.Since.UnixNano())/1e9)
	}
	k := s.Counters
	m.gauge(ksmShared, float64(k.PagesShared))
	m.gauge(ksmSharing, float64(k.PagesSharing))
	m.gauge(ksmUnshared, float64(k.PagesUnshared))
	m.gauge(ksmVolatile, float64(k.PagesVolatile))
	m.counter(ksmScanned, k.PagesScanned)
	m.counter(ksmFullScans, k.FullScans)
	if !k.NoGeneralProfit {
		m.gauge(ksmProfit, float64(k.GeneralProfit))
	}
	if p := s.Process; p != nil {
		m.gauge(ksmMerging, float64(p.MergingPages))
	}
	for _, e := range s.Exports {
		m.gauge(ksmExportMerged, float64(e.MergedBytes), e.Name)
	}
}
