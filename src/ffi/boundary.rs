//! The one place where C pointers are checked and panics are caught.
//!
//! Every exported function wraps its body in [`guard`] (for functions returning
//! `p99_status`) or [`guard_or`] (for functions returning a value), and turns each pointer
//! argument into a reference with [`ref_from`], [`mut_from`], [`slice_from`] or [`out_ptr`],
//! so a NULL becomes `P99_STATUS_NULL_PARAMETER` and a panic becomes `P99_STATUS_PANIC`
//! instead of unwinding into C (which would be undefined behaviour) or aborting the host.

use std::cell::Cell;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::p99_status;

thread_local! {
    static LAST_ERRNO: Cell<c_int> = const { Cell::new(0) };
}

/// Records the errno behind the `P99_STATUS_IO_ERROR` (or other OS-derived status) about to be
/// returned on this thread.
pub fn set_last_errno(errno: c_int) {
    LAST_ERRNO.with(|e| e.set(errno));
}

/// Runs an entry point's body: `Ok(())` becomes `P99_STATUS_OK`, `Err(s)` becomes `s`, and a
/// panic becomes `P99_STATUS_PANIC`.
pub fn guard<F>(body: F) -> p99_status
where
    F: FnOnce() -> Result<(), p99_status>,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => p99_status::Ok,
        Ok(Err(status)) => status,
        Err(_) => p99_status::Panic,
    }
}

/// Runs an entry point that returns a plain value; a panic returns `on_panic`.
pub fn guard_or<T, F>(on_panic: T, body: F) -> T
where
    F: FnOnce() -> T,
{
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Borrows `*ptr` for the duration of the call.
///
/// # Safety
/// If non-NULL, `ptr` must point to a live, properly aligned `T` that no one mutates during the
/// call (the C caller's side of the documented contract).
pub unsafe fn ref_from<'a, T>(ptr: *const T) -> Result<&'a T, p99_status> {
    // SAFETY: non-NULL pointers are valid by the caller's contract.
    unsafe { ptr.as_ref() }.ok_or(p99_status::NullParameter)
}

/// Borrows `*ptr` mutably for the duration of the call.
///
/// # Safety
/// If non-NULL, `ptr` must point to a live, aligned `T` not aliased during the call.
pub unsafe fn mut_from<'a, T>(ptr: *mut T) -> Result<&'a mut T, p99_status> {
    // SAFETY: non-NULL pointers are valid and unaliased by the caller's contract.
    unsafe { ptr.as_mut() }.ok_or(p99_status::NullParameter)
}

/// Borrows `len` bytes at `ptr`. NULL is accepted only when `len` is 0.
///
/// # Safety
/// If `len > 0`, `ptr` must point to `len` readable bytes that stay unchanged during the call.
pub unsafe fn slice_from<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], p99_status> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(p99_status::NullParameter);
    }
    if len > isize::MAX as usize {
        return Err(p99_status::InvalidArgument);
    }
    // SAFETY: non-NULL, length checked, readable by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows `len` writable bytes at `ptr`. NULL is accepted only when `len` is 0.
///
/// # Safety
/// If `len > 0`, `ptr` must point to `len` writable bytes not aliased during the call.
pub unsafe fn slice_mut_from<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], p99_status> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(p99_status::NullParameter);
    }
    if len > isize::MAX as usize {
        return Err(p99_status::InvalidArgument);
    }
    // SAFETY: non-NULL, length checked, writable and unaliased by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// An out-parameter checked for NULL up front and written only on success.
pub struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Writes the result. Call this last, once nothing else can fail.
    pub fn write(self, value: T) {
        // SAFETY: checked non-NULL in `out_ptr`; the caller's contract makes it writable.
        unsafe { self.0.write(value) }
    }
}

/// Checks an out-parameter for NULL before any work is done.
///
/// # Safety
/// If non-NULL, `ptr` must be valid for writing a `T`.
pub unsafe fn out_ptr<T>(ptr: *mut T) -> Result<Out<T>, p99_status> {
    if ptr.is_null() {
        Err(p99_status::NullParameter)
    } else {
        Ok(Out(ptr))
    }
}

/// Checks a caller-filled, size-carrying struct: `ptr` non-NULL and its leading `struct_size`
/// field at least `min_size` (the size of the first published version) and no larger than
/// `max_size` bytes the library knows. Returns the size the caller declared.
///
/// # Safety
/// If non-NULL, `ptr` must point to at least `size_of::<u32>()` readable bytes that begin
/// with the `struct_size` field.
pub unsafe fn struct_size_of(ptr: *const u32, min_size: usize) -> Result<usize, p99_status> {
    if ptr.is_null() {
        return Err(p99_status::NullParameter);
    }
    // SAFETY: non-NULL; every versioned struct starts with a u32 `struct_size` field.
    let size = unsafe { ptr.read() } as usize;
    if size < min_size {
        return Err(p99_status::InvalidArgument);
    }
    Ok(size)
}

/// Writes the first `size` bytes of `value` (at most all of it) to a library-filled,
/// size-carrying struct: a caller built against an older, shorter layout gets only the fields
/// it knows, a newer, longer one keeps its unknown tail untouched.
///
/// # Safety
/// `dst` must be non-NULL and valid for writing `size` bytes (the size the caller declared).
pub unsafe fn write_sized<T: Copy>(dst: *mut T, size: usize, value: &T) {
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: `dst` is writable for `size` >= n bytes by the caller's contract; the source is a
    // local value of at least n bytes; the two cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), dst.cast::<u8>(), n) }
}

/// Returns the errno of the most recent OS-level failure reported by a libp99 call on the
/// calling thread (`P99_STATUS_IO_ERROR` and the other statuses derived from a system call),
/// or 0 if none has happened yet. Thread-local, like `errno`; never cleared by success.
#[no_mangle]
pub extern "C" fn p99_last_errno() -> c_int {
    guard_or(0, || LAST_ERRNO.with(|e| e.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_status() {
        let s = guard(|| panic!("boom"));
        assert_eq!(s, p99_status::Panic);
    }

    #[test]
    fn null_is_reported() {
        // SAFETY: NULL is the case under test; nothing is dereferenced.
        let r = unsafe { ref_from::<u32>(std::ptr::null()) };
        assert_eq!(r.err(), Some(p99_status::NullParameter));
        // SAFETY: NULL with len 0 and NULL with len 1 are both rejected or accepted without
        // reading memory.
        assert!(unsafe { slice_from(std::ptr::null(), 0) }.is_ok());
        // SAFETY: as above.
        assert!(unsafe { slice_from(std::ptr::null(), 1) }.is_err());
    }

    #[test]
    fn io_error_records_errno() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(p99_status::from_io_error(&e), p99_status::IoError);
        assert_eq!(p99_last_errno(), libc::ECONNRESET);
    }
}
