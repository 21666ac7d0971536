//! The publisher of `balance_changed`: one per database, whichever instance holds the
//! outbox's advisory lock, publishing the events the batch transactions committed in
//! the order each account's balance changed.
//!
//! # Ordering guarantee
//!
//! For every IBAN, its BalanceChanged events appear on its partition in the order its
//! balance changed, with any number of instances and across crashes; an event is
//! published at least once, and a repeat (after a failure) repeats a run already
//! published, in its order. So a reader that keeps a balance from the events goes back
//! only by reading again a run it has already read, in order, and ends on the
//! account's balance.
//!
//! Why it holds:
//!
//! 1. **`seq` is commit order per account.** A batch transaction locks the rows of the
//!    accounts it changes (`FOR UPDATE`) before it writes their events to the outbox,
//!    and each event row draws its `seq` from one sequence as it is written. When T1
//!    and T2 both change account A and T1 commits first, T2 got A's lock only after
//!    T1's commit, so every `seq` T2 draws is larger than T1's for A.
//! 2. **The publisher reads no later event of an account before an earlier one.** When
//!    the publisher's read sees T2's event of A, T2 had committed, so T1 had committed
//!    before T2 drew its `seq`: T1's events are visible to the same read. (Events of
//!    different accounts can commit out of `seq` order; the read takes whatever is not
//!    yet published, so a late one is published next time, and no account's order
//!    depends on another's.)
//! 3. **One publisher at a time, in `seq` order.** The publisher holds a session-level
//!    advisory lock on its own connection; another instance takes over only when that
//!    session ends (a clean stop, a crash, a broken connection). It hands one batch of
//!    events, in `seq` order, to the producer thread (one idempotent producer: order
//!    kept per partition), and reads the next only once Kafka acknowledged every one.
//! 4. **Only acknowledged events are forgotten, and only as a prefix.** After a
//!    failure, only the events before the first unacknowledged one are deleted; the
//!    rest are read again in `seq` order and sent again, behind what Kafka already has.
//!    A new publisher starts from whatever is left, in `seq` order.
//!
//! No wait can form a cycle: a transaction never waits for a publication, and the
//! publisher waits only for Kafka. Answers are published by the consumer loops as
//! before; an answer may reach its topic before the events of its transfer, which are
//! durable in the outbox from the commit on.
//!
//! A publisher that stops without Kafka's acknowledgement of its last batch keeps its
//! session, and so the lock, until the producer thread has flushed ([`Handover`]).
//!
//! **Limit.** The lock fences publishers only as long as their sessions live. When
//! PostgreSQL ends the publisher's session while a batch of it is still on its way to
//! Kafka (a database restart or failover, a terminated backend, a client host that the
//! server's TCP keepalive gave up on, set to about a minute here), a successor can
//! publish the same events and newer ones of the same accounts before the producer's
//! retries land the old batch (within `message.timeout.ms`): a reader would see an
//! older balance again until the account's next change. Likewise a record that Kafka
//! refuses for good while a later one of its partition is delivered (a message
//! timeout) is sent again behind the later one. Fencing those would take Kafka
//! transactions (`transactional.id`, read with `read_committed`), which the Open Bank
//! readers do not use. Events a build before the outbox left unpublished are numbered
//! by the migration in no set order.
//!
//! # Waking
//!
//! A loop of the publishing instance wakes it in process after a commit; a loop of
//! another instance has its transaction `NOTIFY` the publisher's session, which looks
//! for notifications every few milliseconds. A read every second catches anything
//! else (a commit during a change of publisher).

mod publisher;

pub(crate) use self::publisher::{BalancePublisher, Handover, PublisherError, PublisherParts};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::db::apply::Wake;

/// What a consumer loop holds of the publisher: whether it runs in this instance, and
/// how to wake it. Dropped by every loop, it tells the publisher the loops have stopped.
#[derive(Clone)]
pub(crate) struct OutboxSignal {
    leading: Arc<AtomicBool>,
    wake: mpsc::SyncSender<()>,
}

impl OutboxSignal {
    /// Who a batch transaction that writes events must wake.
    pub fn wake(&self) -> Wake {
        if self.leading.load(Ordering::Acquire) {
            Wake::InThisInstance
        } else {
            Wake::ElsewhereToo
        }
    }

    /// A batch that wrote events committed: the publisher reads the outbox again.
    pub fn committed(&self) {
        // Full: a wake-up is pending already, and it reads everything committed.
        let _ = self.wake.try_send(());
    }
}

/// The loops' side of the outbox and the publisher's.
pub(crate) fn outbox(parts: PublisherParts) -> (OutboxSignal, BalancePublisher) {
    let leading = Arc::new(AtomicBool::new(false));
    let (wake, woken) = mpsc::sync_channel(1);
    let signal = OutboxSignal {
        leading: Arc::clone(&leading),
        wake,
    };
    (signal, BalancePublisher::new(parts, leading, woken))
}
