//! librdkafka objects this handler holds itself, where rust-rdkafka has no wrapper: an
//! [`Owned`] guard destroys each exactly once and never holds NULL, so no NULL is used.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, c_char};
use std::ptr::NonNull;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// What librdkafka says, cut to this many bytes: a detail, not a page.
const DETAIL_BYTES: usize = 200;

/// A librdkafka object owned by this handler, destroyed on drop.
pub(crate) struct Owned<T> {
    ptr: NonNull<T>,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// Takes `ptr`, as librdkafka returned it: None for NULL (nothing to destroy).
    ///
    /// # Safety
    /// `ptr` is NULL, or owned by the caller and not destroyed elsewhere, and `destroy`
    /// is its destructor.
    pub(crate) unsafe fn new(ptr: *mut T, destroy: unsafe extern "C" fn(*mut T)) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Owned { ptr, destroy })
    }

    /// The object, for a librdkafka call made while this guard lives.
    pub(crate) fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `new`'s contract: owned, non-NULL, not yet destroyed; drop runs once.
        unsafe { (self.destroy)(self.ptr.as_ptr()) }
    }
}

/// A C string from librdkafka, as a short detail.
///
/// # Safety
/// `chars` is NULL or NUL-terminated, and lives for the call.
pub(crate) unsafe fn text(chars: *const c_char) -> String {
    if chars.is_null() {
        return "no detail".to_string();
    }
    // SAFETY: the caller's contract.
    short(&unsafe { CStr::from_ptr(chars) }.to_string_lossy())
}

/// The text of an error buffer librdkafka wrote into (NUL-terminated, else cut at its end).
pub(crate) fn buffer_text(buffer: &[u8]) -> String {
    let chars = CStr::from_bytes_until_nul(buffer).map_or(buffer, CStr::to_bytes);
    short(&String::from_utf8_lossy(chars))
}

fn short(detail: &str) -> String {
    let detail = detail.trim();
    let mut end = detail.len().min(DETAIL_BYTES);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    detail[..end].to_string()
}

/// Hands what librdkafka queued for the log (its log lines and its errors, a refused
/// certificate among them) to the client's context, without waiting. rust-rdkafka's
/// admin client polls only its own queue: without this they never reach the log.
pub(crate) fn forward_logs<C: ClientContext>(client: &Client<C>) {
    // SAFETY: the main queue of a live client; the guard releases this reference to it.
    let main = unsafe {
        Owned::new(
            rd::rd_kafka_queue_get_main(client.native_ptr()),
            rd::rd_kafka_queue_destroy,
        )
    };
    let Some(main) = main else { return };
    loop {
        // SAFETY: a live queue, polled without waiting; the event is the guard's.
        let event = unsafe {
            Owned::new(
                rd::rd_kafka_queue_poll(main.as_ptr(), 0),
                rd::rd_kafka_event_destroy,
            )
        };
        let Some(event) = event else { return };
        // SAFETY: a live event.
        match unsafe { rd::rd_kafka_event_type(event.as_ptr()) } {
            rd::RD_KAFKA_EVENT_LOG => forward_log_line(client, &event),
            rd::RD_KAFKA_EVENT_ERROR => {
                // SAFETY: a live error event; its string lives with it.
                let (code, reason) = unsafe {
                    (
                        rd::rd_kafka_event_error(event.as_ptr()),
                        text(rd::rd_kafka_event_error_string(event.as_ptr())),
                    )
                };
                client
                    .context()
                    .error(KafkaError::Global(code.into()), &reason);
            }
            // Nothing else is asked of this client's main queue.
            _ => {}
        }
    }
}

fn forward_log_line<C: ClientContext>(client: &Client<C>, event: &Owned<rd::rd_kafka_event_t>) {
    let (mut facility, mut line, mut level) = (std::ptr::null(), std::ptr::null(), 0);
    // SAFETY: a live log event; the strings it points to live with it.
    if unsafe { rd::rd_kafka_event_log(event.as_ptr(), &mut facility, &mut line, &mut level) } != 0
    {
        return;
    }
    // SAFETY: NULL or NUL-terminated strings of the live event.
    let (facility, line) = unsafe { (text(facility), text(line)) };
    client.context().log(log_level(level), &facility, &line);
}

/// Adds `brokers` (a `bootstrap.servers` list) to the brokers `client` knows, as
/// librdkafka's rebootstrap would; returns how many it added or found configured.
pub(crate) fn add_brokers<C: ClientContext>(client: &Client<C>, brokers: &str) -> i32 {
    let Ok(brokers) = std::ffi::CString::new(brokers) else {
        return 0;
    };
    // SAFETY: a live client and a NUL-terminated list that lives for the call, which
    // copies it.
    unsafe { rd::rd_kafka_brokers_add(client.native_ptr(), brokers.as_ptr()) }
}

/// librdkafka's syslog level as rust-rdkafka names it (whose own mapping is private).
fn log_level(level: i32) -> RDKafkaLogLevel {
    use RDKafkaLogLevel::*;
    let levels = [Emerg, Alert, Critical, Error, Warning, Notice, Info];
    usize::try_from(level)
        .ok()
        .and_then(|level| levels.get(level).copied())
        .unwrap_or(Debug)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DESTROYED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn count_destroy(_: *mut u8) {
        DESTROYED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_guard_destroys_once_and_never_holds_null() {
        // SAFETY: NULL, or a byte of this test that the counting destructor only counts.
        let null = unsafe { Owned::new(std::ptr::null_mut(), count_destroy) };
        assert!(null.is_none());
        assert_eq!(DESTROYED.load(Ordering::SeqCst), 0);
        let mut byte = 0u8;
        // SAFETY: as above.
        let owned = unsafe { Owned::new(&mut byte, count_destroy) }.unwrap();
        assert_eq!(owned.as_ptr(), &mut byte as *mut u8);
        drop(owned);
        assert_eq!(DESTROYED.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn details_are_short_and_buffers_end_at_their_nul() {
        assert_eq!(buffer_text(b"bad value\0garbage"), "bad value");
        assert_eq!(buffer_text(b"no nul"), "no nul");
        assert_eq!(short(&"é".repeat(150)).len(), DETAIL_BYTES);
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { text(std::ptr::null()) }, "no detail");
    }

    #[test]
    fn log_levels_as_syslog_numbers_them() {
        assert!(matches!(log_level(3), RDKafkaLogLevel::Error));
        assert!(matches!(log_level(4), RDKafkaLogLevel::Warning));
        assert!(matches!(log_level(7), RDKafkaLogLevel::Debug));
        assert!(matches!(log_level(-1), RDKafkaLogLevel::Debug));
    }
}
