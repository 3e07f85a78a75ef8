//! Where a stream is in its user's events, and what to do with the next live one: pure
//! logic, no I/O, so every case of resume, duplicate and gap is a unit test.
//!
//! Cursors are sequences of the events stream (`<PREFIX>_EVENTS`). A user's events are a
//! chain inside it: the stream RePublishes each one live with `Nats-Sequence` (its own
//! sequence) and `Nats-Last-Sequence` (the previous one on the same user subject). A stream
//! remembers the highest sequence it has accounted for (delivered, filtered out, or known
//! to precede its start); a live event is then one of three things:
//!
//! - at or below that position: already accounted for (it came through the replay too);
//! - its predecessor above that position: the predecessor never arrived live (the edge's
//!   connection dropped it, or it was published during a reconnect), so the stream must
//!   read the gap from the stream before anything newer;
//! - otherwise: the next event, deliver it.

/// The highest event sequence a stream has accounted for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position(u64);

/// What a live event means for a stream at a [`Position`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Seen already: drop it.
    Duplicate,
    /// Something of this user's was stored after the position and not seen: read the
    /// stream after the position first (it includes this event).
    Gap,
    /// The next event: deliver it.
    Next,
}

impl Position {
    pub fn new(sequence: u64) -> Self {
        Self(sequence)
    }

    pub fn sequence(self) -> u64 {
        self.0
    }

    /// Classifies a live event with sequence `sequence` whose predecessor on the user's
    /// subject is `previous` (`None` when the header is missing: trust the order).
    pub fn classify(self, sequence: u64, previous: Option<u64>) -> Live {
        if sequence <= self.0 {
            Live::Duplicate
        } else if previous.is_some_and(|previous| previous > self.0) {
            Live::Gap
        } else {
            Live::Next
        }
    }

    /// Accounts for everything up to `sequence`.
    pub fn advance(&mut self, sequence: u64) {
        self.0 = self.0.max(sequence);
    }
}

/// The sequences the events stream holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The oldest sequence still stored (older ones have expired).
    pub first: u64,
    /// The newest sequence assigned.
    pub last: u64,
}

/// Where a stream asked to resume after `cursor` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Replay what follows `cursor`, then live.
    After(u64),
    /// Events after `cursor` may be gone (expired), or the cursor is not of this stream
    /// (ahead of it: another deployment, a recreated stream): tell the client to reload.
    Stale,
}

/// Decides how to resume after `cursor`, given what the stream holds.
pub fn resume(cursor: u64, bounds: Bounds) -> Resume {
    // Everything after the cursor must still be stored: the first stored sequence is at
    // most the one right after it. (An empty, never used stream reports first 0.)
    let expired = cursor.saturating_add(1) < bounds.first;
    if expired || cursor > bounds.last {
        Resume::Stale
    } else {
        Resume::After(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_of_one_user_is_delivered_in_order() {
        // alice's events at 1, 3, 5 with bob's in between (the republish headers of the
        // stack notes: 1/0, 3/1, 5/3).
        let mut position = Position::new(0);
        for (sequence, previous) in [(1, 0), (3, 1), (5, 3)] {
            assert_eq!(position.classify(sequence, Some(previous)), Live::Next);
            position.advance(sequence);
        }
        assert_eq!(position.sequence(), 5);
    }

    #[test]
    fn replayed_events_arriving_live_again_are_duplicates() {
        let position = Position::new(5);
        assert_eq!(position.classify(5, Some(3)), Live::Duplicate);
        assert_eq!(position.classify(3, Some(1)), Live::Duplicate);
    }

    #[test]
    fn a_missed_predecessor_is_a_gap() {
        // 3 was stored but never arrived live.
        let position = Position::new(1);
        assert_eq!(position.classify(5, Some(3)), Live::Gap);
    }

    #[test]
    fn a_start_position_between_two_events_is_not_a_gap() {
        // A live-only stream starts at the stream's last sequence (9); alice's previous
        // event (4) is before it: nothing was missed.
        let position = Position::new(9);
        assert_eq!(position.classify(12, Some(4)), Live::Next);
        // But one stored at 10 and not seen is.
        assert_eq!(position.classify(12, Some(10)), Live::Gap);
    }

    #[test]
    fn a_missing_header_trusts_the_order() {
        assert_eq!(Position::new(3).classify(4, None), Live::Next);
    }

    #[test]
    fn advancing_never_goes_back() {
        let mut position = Position::new(10);
        position.advance(7);
        assert_eq!(position.sequence(), 10);
    }

    #[test]
    fn a_cursor_is_stale_once_what_follows_it_may_have_expired() {
        let bounds = Bounds {
            first: 100,
            last: 500,
        };
        assert_eq!(resume(99, bounds), Resume::After(99));
        assert_eq!(resume(250, bounds), Resume::After(250));
        assert_eq!(resume(500, bounds), Resume::After(500));
        assert_eq!(resume(98, bounds), Resume::Stale);
        assert_eq!(resume(0, bounds), Resume::Stale);
        // Ahead of the stream: not one of its cursors.
        assert_eq!(resume(501, bounds), Resume::Stale);
    }

    #[test]
    fn an_empty_stream_resumes_from_zero_only() {
        let never_used = Bounds { first: 0, last: 0 };
        assert_eq!(resume(0, never_used), Resume::After(0));
        assert_eq!(resume(7, never_used), Resume::Stale);
        // Everything up to 40 expired: 40 is still a valid cursor, 39 is not.
        let emptied = Bounds {
            first: 41,
            last: 40,
        };
        assert_eq!(resume(40, emptied), Resume::After(40));
        assert_eq!(resume(39, emptied), Resume::Stale);
    }
}
