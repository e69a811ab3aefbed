//! The opcode of every message: one table, one line per message kind.
//!
//! Everything that maps a [`Message`] to its opcode or name is generated from the table at the
//! bottom of this file: a constant per opcode (`opcode::GET`, …), [`ALL`], [`is_known`],
//! [`opcode_of`], [`Message::name`] (the constant's name: `"GET"`) and [`Message::is_reply`].
//! Requests and replies sit in separate halves, and the compiler checks that every reply has
//! [`REPLY_BIT`] set, no request does, and no opcode is used twice. A `Message` variant missing
//! from the table does not compile (`opcode_of` matches every variant).

use crate::message::Message;

/// Set in the opcode of every reply and in no request's.
pub const REPLY_BIT: u8 = 0x80;

/// Generates the constants, [`ALL`], [`is_known`], [`opcode_of`] and the `Message` methods
/// from one table (see its one invocation below).
macro_rules! opcodes {
    (
        requests { $($request:ident = $request_op:literal => $request_variant:ident,)* }
        replies { $($reply:ident = $reply_op:literal => $reply_variant:ident,)* }
    ) => {
        opcodes!(@constants $($request = $request_op => $request_variant,)*);
        opcodes!(@constants $($reply = $reply_op => $reply_variant,)*);

        /// Every opcode of this protocol version: requests, then replies, each in ascending
        /// order.
        pub const ALL: [u8; [$($request,)* $($reply,)*].len()] = [$($request,)* $($reply,)*];

        /// Whether `op` is an opcode of this protocol version.
        #[inline]
        pub fn is_known(op: u8) -> bool {
            matches!(op, $($request)|* | $($reply)|*)
        }

        /// The opcode `msg` is sent with.
        pub fn opcode_of(msg: &Message) -> u8 {
            // `Variant { .. }` matches unit, tuple and struct variants alike.
            match msg {
                $(Message::$request_variant { .. } => $request,)*
                $(Message::$reply_variant { .. } => $reply,)*
            }
        }

        impl Message {
            /// The message's name, for logs and errors: the name of its opcode constant
            /// (`"GET"`, `"FIND_SUCCESSOR_REPLY"`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Message::$request_variant { .. } => stringify!($request),)*
                    $(Message::$reply_variant { .. } => stringify!($reply),)*
                }
            }

            /// Whether this message is a reply (it answers a request with the same request
            /// id).
            pub fn is_reply(&self) -> bool {
                opcode_of(self) & REPLY_BIT != 0
            }
        }

        // The table's promises, checked when the crate compiles rather than by a test.
        const _: () = {
            assert!(ascending(&[$($request),*]), "request opcodes must ascend (so none repeats)");
            assert!(ascending(&[$($reply),*]), "reply opcodes must ascend (so none repeats)");
            $(assert!($request & REPLY_BIT == 0, concat!(stringify!($request), " is a request: bit 7 must be clear"));)*
            $(assert!($reply & REPLY_BIT != 0, concat!(stringify!($reply), " is a reply: bit 7 must be set"));)*
        };

        /// Each opcode with the name of its `Message` variant, in [`ALL`]'s order: what the
        /// module doc's opcode table must list (a test holds the two together).
        #[cfg(test)]
        pub(super) const VARIANTS: [(u8, &str); ALL.len()] = [
            $(($request, stringify!($request_variant)),)*
            $(($reply, stringify!($reply_variant)),)*
        ];
    };
    (@constants $($name:ident = $op:literal => $variant:ident,)*) => {
        $(
            #[doc = concat!("The opcode of [`Message::", stringify!($variant), "`].")]
            pub const $name: u8 = $op;
        )*
    };
}

/// Whether `ops` is strictly ascending.
const fn ascending(ops: &[u8]) -> bool {
    let mut i = 1;
    while i < ops.len() {
        if ops[i - 1] >= ops[i] {
            return false;
        }
        i += 1;
    }
    true
}

// The wire format: changing an opcode breaks every peer of another build. Keep each half in
// ascending order; new kinds take the next free opcode in their group (client operations 0x0_,
// Chord maintenance 0x1_, key handoff and replication 0x2_, introspection and login 0x3_; a reply is its
// request's opcode with bit 7 set where there is one). Also add the line to the table in the
// module doc of `crate::frame`.
opcodes! {
    requests {
        GET = 0x01 => Get,
        PUT = 0x02 => Put,
        DELETE = 0x03 => Delete,
        EXECUTE = 0x05 => Execute,
        RING_COMMAND = 0x06 => RingCommand,
        RANGE_COMMAND = 0x07 => RangeCommand,
        SCAN_KEYS = 0x08 => ScanKeys,
        SCAN_RANGE = 0x09 => ScanRange,
        FIND_SUCCESSOR = 0x10 => FindSuccessor,
        GET_NEIGHBORS = 0x11 => GetNeighbors,
        NOTIFY = 0x12 => Notify,
        PING = 0x13 => Ping,
        LEAVING = 0x14 => Leaving,
        GET_MEMBERS = 0x15 => GetMembers,
        MEMBER_EVENTS = 0x16 => MemberEvents,
        LEASE = 0x17 => Lease,
        FORGET = 0x18 => Forget,
        CLAIM_POSITIONS = 0x19 => ClaimPositions,
        TRANSFER = 0x20 => Transfer,
        REPLICATE = 0x21 => Replicate,
        SYNC_DIGESTS = 0x22 => SyncDigests,
        SYNC_KEYS = 0x23 => SyncKeys,
        COLLECT_TOMBSTONES = 0x24 => CollectTombstones,
        GET_INFO = 0x30 => GetInfo,
        GET_STATS = 0x31 => GetStats,
        LOGIN = 0x32 => Login,
    }
    replies {
        GET_REPLY = 0x81 => GetReply,
        PUT_REPLY = 0x82 => PutReply,
        DELETE_REPLY = 0x83 => DeleteReply,
        REDIRECT = 0x84 => Redirect,
        EXECUTE_REPLY = 0x85 => ExecuteReply,
        RING_COMMAND_REPLY = 0x86 => RingCommandReply,
        RANGE_COMMAND_REPLY = 0x87 => RangeCommandReply,
        SCAN_KEYS_REPLY = 0x88 => ScanKeysReply,
        SCAN_RANGE_REPLY = 0x89 => ScanRangeReply,
        FIND_SUCCESSOR_REPLY = 0x90 => FindSuccessorReply,
        NEIGHBORS = 0x91 => Neighbors,
        NOTIFY_REPLY = 0x92 => NotifyReply,
        PONG = 0x93 => Pong,
        LEAVING_REPLY = 0x94 => LeavingReply,
        MEMBERS = 0x95 => Members,
        MEMBER_EVENTS_ACK = 0x96 => MemberEventsAck,
        LEASE_REPLY = 0x97 => LeaseReply,
        FORGET_REPLY = 0x98 => ForgetReply,
        CLAIMS = 0x99 => Claims,
        TRANSFER_ACK = 0xA0 => TransferAck,
        REPLICATE_ACK = 0xA1 => ReplicateAck,
        SYNC_DIGESTS_REPLY = 0xA2 => SyncDigestsReply,
        SYNC_KEYS_REPLY = 0xA3 => SyncKeysReply,
        COLLECT_TOMBSTONES_REPLY = 0xA4 => CollectTombstonesReply,
        INFO = 0xB0 => Info,
        STATS = 0xB1 => Stats,
        LOGIN_REPLY = 0xB2 => LoginReply,
        ERROR = 0xFF => Error,
    }
}
