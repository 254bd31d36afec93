//! The flow log's side of the cache: each entry's span reported when its flow ends, goes idle,
//! runs long or is evicted, a slice of the table per breath; flushed at a stop; a removed
//! tenant's entries reported and freed. Records go to the writer only between breaths: those
//! the packet path makes (an eviction) wait in the exporter until the next sweep.

use super::*;

impl FlowCache {
    /// Reports `e`'s span if its tenant logs flows and it counted something. Between breaths:
    /// the record goes to the writer now.
    pub(super) fn report(&mut self, e: &Entry, why: RecordReason) {
        if self.logged(e)
            && let Some(x) = &mut self.export
        {
            x.emit(e.view().record(why));
        }
    }

    /// [`FlowCache::report`] on the packet path: the record waits for the next breath's
    /// [`FlowCache::sweep`].
    pub(super) fn report_later(&mut self, e: &Entry, why: RecordReason) {
        if self.logged(e)
            && let Some(x) = &mut self.export
        {
            x.hold(e.view().record(why));
        }
    }

    /// True when `e` counted something of a tenant that logs flows, and is IP.
    fn logged(&self, e: &Entry) -> bool {
        e.packets > 0
            && self.logs.get(usize::from(e.tenant)).copied().unwrap_or(false)
            && matches!(e.key.ethertype(), 0x0800 | 0x86dd)
    }

    /// Between breaths, when flows are logged: visits the next slice of the table (the whole
    /// table once per [`SWEEP_PERIOD`]) and reports ended, idle and long-running flows of
    /// logging tenants, starting their next span.
    pub fn sweep(&mut self, now: Nanos) {
        let Some(x) = &mut self.export else { return };
        // What the packet path made since the last breath (evictions) first.
        x.release();
        let (interval, idle) = (x.interval, x.idle);
        if self.sets.is_empty() || !self.any_logs {
            return;
        }
        let due =
            self.size as u128 * u128::from(now.since(self.swept_at).0) / u128::from(SWEEP_PERIOD.0);
        if due == 0 {
            // Less than one entry's worth of time: let it add up.
            return;
        }
        self.swept_at = now;
        for _ in 0..due.min(self.size as u128) as usize {
            let i = self.cursor;
            self.cursor = (i + 1) & (self.size - 1);
            if self.sig_at(i) == 0 {
                continue;
            }
            let Some(&e) = self.entry(Slot(i)) else { continue };
            if !e.occupied || e.packets == 0 {
                continue;
            }
            let quiet = now.since(e.last);
            let why = if e.flags & S_CLOSING != 0 && quiet >= ENDED_QUIET {
                RecordReason::Ended
            } else if quiet >= idle {
                RecordReason::Idle
            } else if now.since(e.start) >= interval {
                RecordReason::Interval
            } else {
                continue;
            };
            self.report(&e, why);
            if let Some(e) = self.entry_mut(Slot(i)) {
                e.packets = 0;
            }
        }
    }

    /// Reports every counted flow of logging tenants (at a clean stop), after the records the
    /// packet path still holds.
    pub fn flush(&mut self) {
        if let Some(x) = &mut self.export {
            x.release();
        }
        for set in 0..self.sets.len() {
            for w in 0..WAYS {
                let e = self.sets[set][w];
                if e.occupied && e.packets > 0 {
                    self.report(&e, RecordReason::Flushed);
                    self.sets[set][w].packets = 0;
                }
            }
        }
    }

    /// Tenant `t` is gone (a reload removed it): its entries are reported as flushed (those
    /// that counted something, when flows are logged) and freed, so its id can be given to a
    /// new tenant that starts with none. Between breaths (walks the whole table).
    pub fn forget_tenant(&mut self, t: TenantId) {
        for set in 0..self.sets.len() {
            for w in 0..WAYS {
                let e = self.sets[set][w];
                if e.occupied && e.tenant == t.0 {
                    if e.packets > 0 {
                        self.report(&e, RecordReason::Flushed);
                    }
                    self.sets[set][w] = EMPTY;
                    let line = &mut self.sigs[set];
                    *line &= !(0xff << (8 * w));
                }
            }
        }
        if let Some(c) = self.per_tenant.get_mut(t.index()) {
            *c = 0;
        }
    }
}
