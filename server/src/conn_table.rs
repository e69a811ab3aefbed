//! The event loop's connections by token: a slab whose tokens name their slot.
//!
//! The loop looks a connection up by its token several times for every request (the read,
//! the commands, the reply, the flush). A hash map, even with the one-multiplication hash of
//! `token_map.rs`, spent about 25 instructions a look-up probing its control bytes: about 290
//! instructions a request at `redis-benchmark -P 1`, 5% of the node's. Here a token is
//! `serial << SLOT_BITS | slot`: the look-up is an index and one comparison.
//!
//! Tokens stay unique for the life of the process (the serial grows with every token handed
//! out), so an event, reply or `CLIENT KILL` that names a closed connection finds nothing,
//! never the connection that took its slot since; and they grow, as Redis' client ids do
//! (`CLIENT ID`: "a unique, monotonically increasing 64-bit integer"; a RESP client's id is
//! its token). A token the table did not hand out (a client's `CLIENT KILL ID 12345`) is
//! looked up as safely: it names a slot whose token differs, or none.
//!
//! Up to [`MAX_OPEN`] (2^20) connections can be open at once: a connection accepted beyond
//! that is refused (closed at once), whatever file descriptor limit the process has; vacant
//! slots are reused, the most recently freed first. Tokens stay below 2^62 (the core keeps the
//! top bits of a reply channel for its own): after 2^42 connections (a million a second for
//! 50 days) no new one is taken. Tokens are 64-bit: the server builds for 64-bit targets only.

use mio::Token;

/// Low bits of a token that name its slot.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
/// The most connections open at once: 1,048,576.
pub(crate) const MAX_OPEN: usize = SLOT_MASK + 1;
/// Serials stay below this, so tokens stay below 2^62.
const SERIAL_LIMIT: usize = 1 << (62 - SLOT_BITS);

const _: () = assert!(usize::BITS == 64, "connection tokens need a 64-bit usize");

/// Connections (`V`) by token; see the module docs.
pub(crate) struct ConnTable<V> {
    /// `(token, value)`; the value is `None` in a vacant slot.
    slots: Vec<(usize, Option<V>)>,
    /// Vacant slots, the most recently freed last.
    free: Vec<usize>,
    /// The serial of the last token handed out (starts at 0: every token is at least
    /// `1 << SLOT_BITS`, above the loop's fixed tokens).
    serial: usize,
}

impl<V> Default for ConnTable<V> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            serial: 0,
        }
    }
}

impl<V> ConnTable<V> {
    /// A new token for the next [`insert`](Self::insert), naming a vacant slot; `None` when
    /// [`MAX_OPEN`] connections are open (or every serial is used). A token not inserted (the
    /// connection failed to register) is simply never used; the next one names the same slot
    /// under a new serial.
    pub(crate) fn next_token(&mut self) -> Option<Token> {
        let slot = self.free.last().copied().unwrap_or(self.slots.len());
        if slot > SLOT_MASK || self.serial + 1 >= SERIAL_LIMIT {
            return None;
        }
        self.serial += 1;
        Some(Token(self.serial << SLOT_BITS | slot))
    }

    /// Puts `value` in the slot `token` names; `token` must come from
    /// [`next_token`](Self::next_token) and name a vacant slot (panics otherwise: a bug in the
    /// loop, not something a peer can cause).
    pub(crate) fn insert(&mut self, token: Token, value: V) {
        let slot = token.0 & SLOT_MASK;
        if slot == self.slots.len() {
            self.slots.push((token.0, Some(value)));
        } else {
            let at = self
                .free
                .iter()
                .rposition(|&s| s == slot)
                .expect("a token from next_token names a vacant slot");
            self.free.swap_remove(at);
            self.slots[slot] = (token.0, Some(value));
        }
    }

    #[inline]
    pub(crate) fn get(&self, token: &Token) -> Option<&V> {
        match self.slots.get(token.0 & SLOT_MASK) {
            Some((t, value)) if *t == token.0 => value.as_ref(),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, token: &Token) -> Option<&mut V> {
        match self.slots.get_mut(token.0 & SLOT_MASK) {
            Some((t, value)) if *t == token.0 => value.as_mut(),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn contains_key(&self, token: &Token) -> bool {
        self.get(token).is_some()
    }

    /// Takes the connection out; its slot is free for the next token.
    pub(crate) fn remove(&mut self, token: &Token) -> Option<V> {
        let slot = token.0 & SLOT_MASK;
        match self.slots.get_mut(slot) {
            Some((t, value)) if *t == token.0 && value.is_some() => {
                self.free.push(slot);
                value.take()
            }
            _ => None,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Token, &V)> {
        self.slots
            .iter()
            .filter_map(|(t, v)| v.as_ref().map(|v| (Token(*t), v)))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().filter_map(|(_, v)| v.as_ref())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (Token, &mut V)> {
        self.slots
            .iter_mut()
            .filter_map(|(t, v)| v.as_mut().map(|v| (Token(*t), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// At [`MAX_OPEN`] connections no token is handed out (the loop refuses the connection);
    /// one close makes room again, and the new token names the freed slot.
    #[test]
    fn refuses_a_token_when_full_and_takes_one_after_a_close() {
        let mut table = ConnTable::default();
        let mut first = None;
        for _ in 0..MAX_OPEN {
            let token = table.next_token().expect("room left");
            first.get_or_insert(token);
            table.insert(token, ());
        }
        assert_eq!(table.next_token(), None);
        let first = first.expect("one token at least");
        assert_eq!(table.remove(&first), Some(()));
        let again = table.next_token().expect("a slot is free");
        assert_eq!(again.0 & SLOT_MASK, first.0 & SLOT_MASK);
        assert!(again.0 > first.0);
        assert_eq!(table.get(&first), None);
        table.insert(again, ());
        assert_eq!(table.get(&again), Some(&()));
        assert_eq!(table.next_token(), None);
    }

    /// The table against a `HashMap` model under a seeded mix of opens, closes and look-ups,
    /// including tokens of closed connections and tokens never handed out.
    #[test]
    fn matches_a_map_under_opens_closes_and_stale_tokens() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut table = ConnTable::default();
        let mut model: HashMap<usize, u64> = HashMap::new();
        let mut handed: Vec<Token> = Vec::new();
        let mut peak = 0;
        for step in 0..20_000u64 {
            match next() % 4 {
                0 => {
                    let token = table.next_token().expect("far below the limits");
                    assert!(handed.iter().all(|t| t.0 < token.0), "tokens grow");
                    handed.push(token);
                    // One token in eight is never inserted (a failed registration).
                    if next() % 8 != 0 {
                        table.insert(token, step);
                        model.insert(token.0, step);
                    }
                }
                1 | 2 if !handed.is_empty() => {
                    // Mostly an open connection; sometimes a closed or never-inserted one.
                    let live: Vec<usize> = model.keys().copied().collect();
                    let t = match (next() % 4, live.len()) {
                        (0, _) | (_, 0) => handed[(next() % handed.len() as u64) as usize],
                        (_, n) => Token(live[(next() % n as u64) as usize]),
                    };
                    assert_eq!(table.remove(&t), model.remove(&t.0));
                }
                _ => {
                    let t = match handed.len() {
                        0 => Token(next() as usize),
                        n => handed[(next() % n as u64) as usize],
                    };
                    assert_eq!(table.get(&t), model.get(&t.0));
                    assert_eq!(table.get_mut(&t).copied(), model.get(&t.0).copied());
                    assert_eq!(table.contains_key(&t), model.contains_key(&t.0));
                    let stranger = Token(next() as usize);
                    assert_eq!(table.get(&stranger), model.get(&stranger.0));
                }
            }
            assert_eq!(table.values().count(), model.len());
            peak = peak.max(model.len());
        }
        let mut seen: Vec<(usize, u64)> = table.iter_mut().map(|(t, v)| (t.0, *v)).collect();
        seen.sort_unstable();
        let mut want: Vec<(usize, u64)> = model.into_iter().collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert_eq!(table.values().count(), want.len());
        // Slots are reused: never more than were open at once.
        assert_eq!(table.slots.len(), peak);
        assert!(peak < handed.len() / 4);
    }
}
