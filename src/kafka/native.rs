//! librdkafka objects this handler holds itself, where rust-rdkafka has no wrapper: an
//! [`Owned`] guard destroys each exactly once and never holds NULL, so no NULL is used.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, c_char};
use std::ptr::NonNull;

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
}
