//! Store operations in flight: what each is for, so its result reaches the request, transfer
//! or repair round that asked for it.

use std::sync::Arc;

use super::op_table::OpTable;

use chordkv_protocol::{in_half_open, Id};

use super::node::{Millis, Node, Output, ReplyTo, StoreOpId};
use super::sync::SyncWait;
use super::timer::Timer;
use crate::store::{Store, StoreError, StoreOp, StoreOutcome};

/// What an in-flight store op is for.
#[derive(Debug)]
pub(super) enum StoreWait {
    /// A client operation served here; reply when done.
    Serve {
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        kind: ServeKind,
        key_id: Id,
        /// The pending replicated write whose reply this is, with `AckPolicy::All`.
        write: Option<u64>,
    },
    /// A transfer batch being stored; ack when done.
    Apply {
        to: ReplyTo,
        request_id: u64,
        transfer_id: u64,
        start: Id,
        end: Id,
        last: bool,
    },
    /// An outgoing transfer's scan or removal.
    TransferScan(u64),
    TransferRemove(u64),
    Info {
        to: ReplyTo,
        request_id: u64,
    },
    /// Stats, step 1: every live key and the bytes held; step 2: the primary range's keys.
    Stats {
        to: ReplyTo,
        request_id: u64,
    },
    StatsPrimary {
        to: ReplyTo,
        request_id: u64,
        total: u64,
        /// [`crate::store::Store::bytes`], when the driver can tell.
        bytes: Option<u64>,
    },
    /// A replica write being stored; ack when done.
    ReplicaApply {
        to: ReplyTo,
        request_id: u64,
    },
    Sync(SyncWait),
    /// An Execute's read of its keys, and its writes (`execute.rs`).
    ExecuteRead(u64),
    ExecuteWrite(u64),
    /// The expiry sweep's scan of the node's range.
    ExpirySweep,
    /// A range command's count or scan (`ring_command.rs`).
    RangeCommand(u64),
    /// A scan step's entries (`scan.rs`).
    ScanStep {
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        end: Id,
        count: u32,
        pattern: Option<bytes::Bytes>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServeKind {
    Get,
    Put(u64),
    Delete(u64),
}

/// Store operations sent to the driver and not finished yet; and the store the node runs its
/// served gets and writes on itself, when its host gives it one.
#[derive(Default)]
pub(super) struct StoreOps {
    pub waits: OpTable<StoreWait>,
    pub next_id: StoreOpId,
    /// The vnode's store partition, when it answers at once and deterministically (the
    /// memory store, [`Node::run_store_inline`]): a client GET, PUT or DELETE this node serves
    /// runs on it in the call that serves it ([`Node::store_now`]), instead of going out as
    /// an [`Output::Store`] and coming back through `store_done`.
    pub inline: Option<Arc<dyn Store>>,
    /// Ops run on `inline` that may have changed the store (every write) or failed: the
    /// host's store cache gives no answer kept from before a change (`Host::route_output`
    /// compares).
    pub inline_changes: u64,
}

impl std::fmt::Debug for StoreOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOps")
            .field("waits", &self.waits)
            .field("next_id", &self.next_id)
            .field("inline", &self.inline.as_ref().map(|s| s.name()))
            .field("inline_changes", &self.inline_changes)
            .finish()
    }
}

impl Node {
    /// From now on the node runs the client GETs, PUTs and DELETEs it serves on `store` (its
    /// partition of the host's store) in the call that serves them: for a store that answers
    /// at once and deterministically (the memory store), so that the node is still a function
    /// of its inputs. Every other op still goes out as an [`Output::Store`].
    pub fn run_store_inline(&mut self, store: Arc<dyn Store>) {
        self.store.inline = Some(store);
    }

    /// How many ops the node ran on its inline store that may have changed it (every write)
    /// or failed ([`Node::run_store_inline`]).
    pub fn inline_store_changes(&self) -> u64 {
        self.store.inline_changes
    }

    /// Whether the node runs the gets and writes it serves on an inline store
    /// ([`Node::run_store_inline`], [`Node::store_now`]).
    pub(super) fn stores_inline(&self) -> bool {
        self.store.inline.is_some()
    }

    /// Runs `op` (the `Get` or `Put` of a client GET, PUT or DELETE being served) on the
    /// inline store now, with the bookkeeping [`Node::store_op`] and `store_done` give an op
    /// that goes out. Call only when [`Node::stores_inline`]; any other op is refused (faulty
    /// code).
    ///
    /// Running it here, before store ops queued earlier have run, reorders nothing that
    /// matters: those are merges by version, scans and collections, which commute with a
    /// served write, and a served op runs only once the ones it depends on (a transfer into
    /// the range, a lease's catch-up) have finished.
    pub(super) fn store_now(&mut self, now: Millis, op: StoreOp) -> Result<StoreOutcome, StoreError> {
        let result = match (&self.store.inline, op) {
            (Some(store), StoreOp::Get { id, key }) => store.get_with_id(&id, &key).map(StoreOutcome::Got),
            (Some(store), StoreOp::Put { id, key, entry }) => {
                let tombstone = !entry.is_live();
                let result = store.put_with_id(&id, &key, entry).map(StoreOutcome::Put);
                self.store.inline_changes += 1;
                if tombstone {
                    self.tombstone_stored();
                }
                result
            }
            _ => return Err(StoreError::Unavailable("no inline store for this op".to_string())), // faulty code
        };
        if let Err(e) = &result {
            self.store.inline_changes += 1;
            self.stats.store_errors += 1;
            if matches!(e, StoreError::Lost(_)) {
                self.on_store_lost(now);
            }
        }
        result
    }

    /// A tombstone is being stored: counted, and the tombstone collection's timer armed.
    fn tombstone_stored(&mut self) {
        self.repl.tombstones_stored += 1;
        // A node without replicas runs anti-entropy's timer only to collect its own
        // tombstones: armed by the first one, so a node that never deletes does no work
        // (and stopped again once a collection left none: `SyncWait::Collected`).
        let at = self.last_now + self.config.anti_entropy_interval_ms;
        self.timers.arm(Timer::AntiEntropy, at);
    }

    pub(super) fn store_op(&mut self, op: StoreOp, wait: StoreWait) -> StoreOpId {
        if let StoreOp::PutMany { items } = &op {
            // The expiry sweep wakes when a value with an expiry arrives.
            self.exec.may_expire |= items.iter().any(|it| it.expires_at != 0);
        }
        let tombstone = match &op {
            StoreOp::Put { entry, .. } => !entry.is_live(),
            StoreOp::PutMany { items } => items.iter().any(|it| it.value.is_none()),
            _ => false,
        };
        if tombstone {
            self.tombstone_stored();
        }
        let id = self.store.next_id;
        self.store.next_id += 1;
        if tombstone {
            self.repl.tombstone_ops.insert(id);
        }
        self.store.waits.insert(id, wait);
        self.out.push_back(Output::Store {
            id,
            vnode: self.me.addr.vnode,
            op,
        });
        id
    }

    /// Whether a client write to a key in `(start, end]` is being stored right now, or an
    /// Execute of one is running or waiting (or a write waits behind one).
    pub(super) fn write_in_flight(&self, start: &Id, end: &Id) -> bool {
        self.exec.busy_in(start, end)
            || self.store.waits.values().any(|w| match w {
                StoreWait::Serve {
                    kind: ServeKind::Put(_) | ServeKind::Delete(_),
                    key_id,
                    ..
                } => in_half_open(key_id, start, end),
                _ => false,
            })
    }

    /// The store lost what it held (a Redis restarted without persistence): nothing it says is
    /// trusted until the node's ranges are filled again from the other copies. Under
    /// `consistent` every lease catches up again before it serves; under `available` the node
    /// answers no read of its own range until an anti-entropy round has refilled it.
    pub(super) fn on_store_lost(&mut self, now: Millis) {
        if !self.repl.store_lost {
            self.stats.store_losses += 1;
        }
        // Without replicas there is nothing to refill from: what is gone is gone.
        self.repl.store_lost = self.config.replicas > 0;
        self.trust.lose(now);
        self.leases.invalidate_catch_up();
        self.timers.bring_forward(Timer::AntiEntropy, now);
    }
}
