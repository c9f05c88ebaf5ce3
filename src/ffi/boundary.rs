//! The one place where C pointers become Rust references and panics are caught.
//!
//! Every exported function wraps its body in [`guard`] (for functions returning
//! `p99_status`) or [`guard_or`] (for functions returning a value), and turns each pointer
//! argument into a Rust value with [`c_arg!`]. The safety argument for each *form* of pointer
//! argument (a handle, a caller-owned struct, an out-parameter, a buffer, a C string, a
//! versioned struct) is written once, in that macro's arm; the exported function's documented
//! C contract is what makes it hold. A NULL becomes `P99_STATUS_NULL_PARAMETER`, a panic
//! becomes `P99_STATUS_PANIC`, and a failure that has more to say than its status leaves its
//! text for `p99_last_error_message()`.
//!
//! Growth: structs C and libp99 exchange by pointer start with `uint32_t struct_size` and
//! only ever grow by appending fields ([`Versioned`]). A struct C fills in is read with
//! [`read_versioned`] (any size from the first published one up; missing fields take their
//! defaults; a larger struct is refused only if the bytes this library does not know are not
//! zero); a struct libp99 fills is written with [`VersionedOut`] (at most `struct_size`
//! bytes, fields unknown to this library zeroed).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::p99_status;

/// `LAST_FAILURE` before any call on the thread has failed.
const NO_FAILURE: u64 = u32::MAX as u64;
/// Set in `LAST_FAILURE` when `LAST_DETAIL` belongs to that failure.
const HAS_DETAIL: u64 = 1 << 32;

thread_local! {
    static LAST_ERRNO: Cell<c_int> = const { Cell::new(0) };
    /// The most recent failure on this thread: its status, plus `HAS_DETAIL`. A plain
    /// failure (a NOT_FOUND on a cache miss) costs this one store: no allocation, and no
    /// access to the detail's thread-local (which needs a destructor, so a costlier lookup).
    static LAST_FAILURE: Cell<u64> = const { Cell::new(NO_FAILURE) };
    /// The text of the most recent failure that had one.
    static LAST_DETAIL: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records the errno behind the `P99_STATUS_IO_ERROR` (or other OS-derived status) about to be
/// returned on this thread.
pub fn set_last_errno(errno: c_int) {
    LAST_ERRNO.with(|e| e.set(errno));
}

/// Why a call failed: its status, and for failures that have more to say, a text. Two words,
/// so that the `Result` every entry point's body returns stays small on the hot paths (a
/// cache miss is a failure too); the text is boxed once more, off those paths.
#[derive(Debug)]
pub struct Failure {
    status: p99_status,
    detail: Option<Box<Cow<'static, str>>>,
}

const _: () = assert!(std::mem::size_of::<Result<(), Failure>>() <= 16);

impl Failure {
    /// A failure with a text for `p99_last_error_message()`.
    pub fn new(status: p99_status, detail: impl Into<Cow<'static, str>>) -> Failure {
        Failure { status, detail: Some(Box::new(detail.into())) }
    }

    /// `P99_STATUS_INVALID_ARGUMENT` saying which argument and why.
    pub fn invalid(detail: impl Into<Cow<'static, str>>) -> Failure {
        Failure::new(p99_status::InvalidArgument, detail)
    }

    /// The status C receives.
    pub fn status(&self) -> p99_status {
        self.status
    }

    /// Leaves this failure for `p99_last_error_message()` and returns its status.
    #[inline(never)]
    fn record(self) -> p99_status {
        match self.detail {
            None => LAST_FAILURE.with(|l| l.set(self.status as u64)),
            Some(text) => {
                let c = CString::new(text.replace('\0', " ")).unwrap_or_default();
                // try_with: during thread exit (a C TLS destructor calling in after Rust's
                // thread-locals are gone) the text is dropped rather than panicking here,
                // outside the catch_unwind.
                let kept = LAST_DETAIL.try_with(|d| *d.borrow_mut() = Some(c)).is_ok();
                let flag = if kept { HAS_DETAIL } else { 0 };
                LAST_FAILURE.with(|l| l.set(self.status as u64 | flag));
            }
        }
        self.status
    }
}

impl From<p99_status> for Failure {
    fn from(status: p99_status) -> Failure {
        Failure { status, detail: None }
    }
}

/// The body of an exported function that returns `p99_status`.
pub type CResult = Result<(), Failure>;

#[cold]
#[inline(never)]
fn panic_failure(payload: Box<dyn std::any::Any + Send>) -> Failure {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string());
    Failure::new(p99_status::Panic, format!("internal panic caught at the C boundary: {what}"))
}

/// Runs an entry point's body: `Ok(())` becomes `P99_STATUS_OK`; a failure or a panic is
/// recorded for `p99_last_error_message()` and its status returned.
///
/// Inlined into the entry point, so that the body's arguments are not first spilled to the
/// stack for a closure called through another function (a few dozen instructions on the
/// cache's hottest calls); recording a failure and catching a panic stay out of line.
#[inline(always)]
pub fn guard<F>(body: F) -> p99_status
where
    F: FnOnce() -> CResult,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => p99_status::Ok,
        Ok(Err(failure)) => failure.record(),
        Err(payload) => panic_failure(payload).record(),
    }
}

/// Runs an entry point that returns a plain value; a panic returns `on_panic` (and is recorded
/// for `p99_last_error_message()`).
pub fn guard_or<T, F>(on_panic: T, body: F) -> T
where
    F: FnOnce() -> T,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            panic_failure(payload).record();
            on_panic
        }
    }
}

// ------------------------------------------------------------------------------------------
// Handles

/// An object C holds by pointer, opaque in the header. Its constructor hands it to C with
/// [`Handle::into_c`]; every call borrows it through `c_arg!(handle ...)`; its `_free` takes
/// it back once through `c_arg!(owned ...)`. One ownership mode for every handle: a `Box`,
/// owned by C between the constructor and `_free`. Shared access only: a handle's mutable
/// state is behind its own locks, so any number of calls may borrow it at once (each type's
/// documentation says which calls may run concurrently).
pub trait Handle: Sized {
    /// Gives a new object to C, which owns it until the type's `_free`.
    fn into_c(self) -> *mut Self {
        Box::into_raw(Box::new(self))
    }

    /// Borrows the object behind `ptr` for the duration of the call.
    ///
    /// # Safety
    /// `ptr` is NULL or came from [`Handle::into_c`] and has not been freed, and its `_free`
    /// does not run during the borrow.
    #[inline]
    unsafe fn borrow<'a>(ptr: *const Self) -> Option<&'a Self> {
        // SAFETY: non-NULL pointers are live boxes from into_c (the function's contract).
        unsafe { ptr.as_ref() }
    }

    /// Takes the object behind `ptr` back from C (for `_free`); `None` for NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or came from [`Handle::into_c`], has not been freed, and is not used
    /// (by this or any other thread) after this call.
    unsafe fn take(ptr: *mut Self) -> Option<Box<Self>> {
        // SAFETY: non-NULL pointers are live boxes from into_c, taken once (the contract).
        (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr) })
    }
}

#[cold]
fn null(name: &'static str) -> Failure {
    Failure::new(p99_status::NullParameter, format!("`{name}` is NULL"))
}

/// Turns a pointer argument of the enclosing exported function into a Rust value, checking it
/// for NULL. The pointer must be a parameter of that function, or a pointer field of a struct
/// parameter that the function's documentation says is borrowed until return (hence a local
/// name, `ident`, never an expression): that documented C contract is the safety argument,
/// stated once per form below.
///
/// | form | argument | result |
/// |---|---|---|
/// | `handle p` | `*const H`, `H: Handle` | `Result<&H, Failure>` |
/// | `owned p` | `*mut H`, consumed by `_free` | `Option<Box<H>>` (NULL: `None`) |
/// | `mut p` | `*mut T`, a caller-owned struct | `Result<&mut T, Failure>` |
/// | `out p` | `*mut T`, required out-parameter | `Result<Out<T>, Failure>` |
/// | `opt_out p` | `*mut T`, optional out-parameter | `Option<Out<T>>` |
/// | `slice p, n` | `*const T`, `n` elements | `Result<&[T], Failure>` (NULL ok when n = 0) |
/// | `slice_mut p, n` | `*mut T`, `n` elements | `Result<&mut [T], Failure>` |
/// | `cstr p` | `*const c_char`, NUL-terminated | `Result<&CStr, Failure>` |
/// | `versioned_in p, d` | `*const T`, `T: Versioned`, defaults `d` | `Result<T, Failure>` |
/// | `versioned_out p` | `*mut T`, `T: Versioned` | `Result<VersionedOut<T>, Failure>` |
macro_rules! c_arg {
    (handle $p:ident) => {{
        // SAFETY: the function's contract: a handle argument is NULL or a live handle of its
        // type whose `_free` does not run during the call (every type documents this).
        unsafe { $crate::ffi::boundary::Handle::borrow($p) }
            .ok_or_else(|| $crate::ffi::boundary::null_arg(stringify!($p)))
    }};
    (owned $p:ident) => {{
        // SAFETY: the `_free` contract: NULL or a live handle of its type that no call uses
        // during or after this one.
        unsafe { $crate::ffi::boundary::Handle::take($p) }
    }};
    (mut $p:ident) => {{
        // SAFETY: the function's contract: NULL or a valid caller-owned struct that no other
        // thread touches during the call.
        unsafe { $p.as_mut() }.ok_or_else(|| $crate::ffi::boundary::null_arg(stringify!($p)))
    }};
    (out $p:ident) => {{
        // SAFETY: the function's contract: NULL or valid for writing one value.
        unsafe { $crate::ffi::boundary::Out::new($p) }
            .ok_or_else(|| $crate::ffi::boundary::null_arg(stringify!($p)))
    }};
    (opt_out $p:ident) => {{
        // SAFETY: the function's contract: NULL (not wanted) or valid for writing one value.
        unsafe { $crate::ffi::boundary::Out::new($p) }
    }};
    (slice $p:ident, $n:expr) => {{
        // SAFETY: the function's contract: `$n` readable elements at the pointer (which may
        // be NULL only when `$n` is 0), unchanged during the call.
        unsafe { $crate::ffi::boundary::slice_from($p, $n, stringify!($p)) }
    }};
    (slice_mut $p:ident, $n:expr) => {{
        // SAFETY: the function's contract: `$n` writable elements at the pointer (NULL only
        // when `$n` is 0), not used by anyone else during the call.
        unsafe { $crate::ffi::boundary::slice_mut_from($p, $n, stringify!($p)) }
    }};
    (cstr $p:ident) => {{
        // SAFETY: the function's contract: NULL or a NUL-terminated string, unchanged during
        // the call.
        unsafe { $crate::ffi::boundary::cstr_from($p, stringify!($p)) }
    }};
    (versioned_in $p:ident, $defaults:expr) => {{
        // SAFETY: the function's contract: NULL or a struct of its type whose `struct_size`
        // bytes are readable.
        unsafe { $crate::ffi::boundary::read_versioned($p, $defaults, stringify!($p)) }
    }};
    (versioned_out $p:ident) => {{
        // SAFETY: the function's contract: NULL or a struct of its type whose `struct_size`
        // (set by the caller) bytes are writable.
        unsafe { $crate::ffi::boundary::VersionedOut::new($p, stringify!($p)) }
    }};
}
pub(crate) use c_arg;

/// `P99_STATUS_NULL_PARAMETER` naming the argument.
#[cold]
pub fn null_arg(name: &'static str) -> Failure {
    null(name)
}

#[cold]
fn too_long(name: &'static str, len: usize) -> Failure {
    Failure::invalid(format!("`{name}`: {len} elements is more than memory holds"))
}

/// Borrows `len` elements at `ptr`. NULL is accepted only when `len` is 0.
///
/// # Safety
/// If `len > 0`, `ptr` points to `len` readable, initialised `T`s that stay unchanged during
/// the call.
#[inline]
pub unsafe fn slice_from<'a, T>(
    ptr: *const T,
    len: usize,
    name: &'static str,
) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(null(name));
    }
    if len.checked_mul(std::mem::size_of::<T>()).map_or(true, |b| b > isize::MAX as usize) {
        return Err(too_long(name, len));
    }
    // SAFETY: non-NULL, size checked, readable by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows `len` writable elements at `ptr`. NULL is accepted only when `len` is 0.
///
/// # Safety
/// If `len > 0`, `ptr` points to `len` writable, initialised `T`s not aliased during the call.
#[inline]
pub unsafe fn slice_mut_from<'a, T>(
    ptr: *mut T,
    len: usize,
    name: &'static str,
) -> Result<&'a mut [T], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(null(name));
    }
    if len.checked_mul(std::mem::size_of::<T>()).map_or(true, |b| b > isize::MAX as usize) {
        return Err(too_long(name, len));
    }
    // SAFETY: non-NULL, size checked, writable and unaliased by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Borrows a NUL-terminated C string.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays unchanged during the call.
#[inline]
pub unsafe fn cstr_from<'a>(ptr: *const c_char, name: &'static str) -> Result<&'a CStr, Failure> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// An out-parameter checked for NULL up front and written only on success.
pub struct Out<T>(*mut T);

impl<T> Out<T> {
    /// `None` for NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or valid for writing one `T` until the call returns.
    #[inline]
    pub unsafe fn new(ptr: *mut T) -> Option<Out<T>> {
        (!ptr.is_null()).then_some(Out(ptr))
    }

    /// Writes the result. Call this last, once nothing else can fail.
    #[inline]
    pub fn write(self, value: T) {
        // SAFETY: non-NULL (checked in `new`) and writable by the contract `new` required.
        unsafe { self.0.write(value) }
    }
}

// ------------------------------------------------------------------------------------------
// Growth

/// Largest `struct_size` accepted: far above any struct here, low enough that a garbage size
/// is refused before libp99 reads or writes that far.
pub const STRUCT_SIZE_MAX: usize = 4096;

/// A struct that C and libp99 exchange by pointer and that may grow.
///
/// # Safety
/// Implementors are `#[repr(C)]`, start with a `u32 struct_size` field at offset 0, contain
/// only fields for which every byte pattern C may store is valid (integers, pointers,
/// `Option` of function pointers, and `bool` holding 0 or 1), and grow only by appending fields
/// that start at or after the previous version's `sizeof` (never in its trailing padding).
pub unsafe trait Versioned: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// `sizeof` of the first published layout: the smallest `struct_size` accepted. Written as
    /// a number, never as `size_of::<Self>()`, so appending a field cannot move it.
    const FIRST_SIZE: usize;
}

/// Checks a `struct_size` a caller declared for `T`.
#[inline]
fn check_size<T: Versioned>(size: usize, name: &'static str) -> Result<(), Failure> {
    if (T::FIRST_SIZE..=STRUCT_SIZE_MAX).contains(&size) {
        Ok(())
    } else {
        Err(bad_size::<T>(size, name))
    }
}

/// Why `size` is refused for `T` (see [`check_size`]).
#[cold]
#[inline(never)]
fn bad_size<T: Versioned>(size: usize, name: &'static str) -> Failure {
    if size < T::FIRST_SIZE {
        Failure::invalid(format!(
            "`{name}`: struct_size {size} is smaller than the first published {} ({} bytes); \
             set it to sizeof({})",
            T::NAME,
            T::FIRST_SIZE,
            T::NAME
        ))
    } else {
        Failure::invalid(format!(
            "`{name}`: struct_size {size} is not plausible for {} (at most {STRUCT_SIZE_MAX}); set it to sizeof({})",
            T::NAME,
            T::NAME
        ))
    }
}

/// Reads a caller-filled struct of any published size: `defaults` with the first
/// `min(struct_size, sizeof(T))` bytes replaced by the caller's. Refused
/// (`P99_STATUS_INVALID_ARGUMENT`) when `struct_size` is below the first published size, or
/// when the caller's struct is larger and a byte this library does not know is not zero (a
/// field of a newer version set to something this version cannot honour).
///
/// # Safety
/// `ptr` is NULL or points to a struct whose first 4 bytes are its `struct_size` and whose
/// `struct_size` bytes are readable.
pub unsafe fn read_versioned<T: Versioned>(
    ptr: *const T,
    defaults: T,
    name: &'static str,
) -> Result<T, Failure> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: non-NULL; every versioned struct starts with a u32 struct_size (contract).
    let size = unsafe { ptr.cast::<u32>().read_unaligned() } as usize;
    check_size::<T>(size, name)?;
    let ours = std::mem::size_of::<T>();
    // SAFETY: the caller declared `size` readable bytes (contract), and `size` was checked to
    // be at most STRUCT_SIZE_MAX.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) };
    if let Some(pos) = bytes.iter().skip(ours).position(|&b| b != 0) {
        return Err(Failure::invalid(format!(
            "`{name}`: byte {} of {} is not zero, but this libp99 knows only the first {ours} bytes \
             of {} (a field of a newer version is set)",
            ours + pos,
            T::NAME,
            T::NAME
        )));
    }
    let mut value = defaults;
    // SAFETY: copies min(size, ours) bytes into a local T; T's fields accept every byte pattern
    // C stores (Versioned's contract), and fields past the caller's size keep their defaults.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut value as *mut T).cast::<u8>(),
            size.min(ours),
        )
    };
    Ok(value)
}

/// A struct libp99 fills, checked before any work: at most the caller's `struct_size` bytes
/// are written, `struct_size` itself is left as the caller set it, and bytes past this
/// library's `sizeof(T)` (fields of a newer version) are zeroed.
pub struct VersionedOut<T> {
    ptr: *mut T,
    size: usize,
}

impl<T: Versioned> VersionedOut<T> {
    /// Checks `ptr` and the `struct_size` the caller set in it.
    ///
    /// # Safety
    /// `ptr` is NULL or points to a struct whose first 4 bytes are its `struct_size` and whose
    /// `struct_size` bytes are writable until the call returns.
    #[inline]
    pub unsafe fn new(ptr: *mut T, name: &'static str) -> Result<VersionedOut<T>, Failure> {
        if ptr.is_null() {
            return Err(null(name));
        }
        // SAFETY: non-NULL; starts with a u32 struct_size (contract).
        let size = unsafe { ptr.cast::<u32>().read_unaligned() } as usize;
        check_size::<T>(size, name)?;
        Ok(VersionedOut { ptr, size })
    }

    /// Writes `value` (its `struct_size` replaced by the caller's). Call last.
    #[inline]
    pub fn write(self, value: T) {
        let ours = std::mem::size_of::<T>();
        if self.size == ours {
            // The caller's struct is this library's: one plain store of the whole value.
            // SAFETY: `size` (= sizeof(T)) writable bytes at `ptr` (contract of `new`),
            // written without assuming alignment; struct_size at offset 0 as above.
            unsafe {
                self.ptr.write_unaligned(value);
                self.ptr.cast::<u32>().write_unaligned(self.size as u32);
            }
            return;
        }
        let n = self.size.min(ours);
        let dst = self.ptr.cast::<u8>();
        // SAFETY: the caller declared `size` writable bytes at `ptr` (contract of `new`); at
        // most `size` bytes are written: n from a local T, then zeros up to `size`, then the
        // 4-byte struct_size at offset 0 (size >= FIRST_SIZE >= 4).
        unsafe {
            std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), dst, n);
            if self.size > ours {
                std::ptr::write_bytes(dst.add(ours), 0, self.size - ours);
            }
            dst.cast::<u32>().write_unaligned(self.size as u32);
        }
    }
}

/// `sizeof(T)` as the `struct_size` value a struct of this library's version carries.
pub const fn struct_size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

// ------------------------------------------------------------------------------------------
// Exported

/// Returns the errno of the most recent OS-level failure reported by a libp99 call on the
/// calling thread (`P99_STATUS_IO_ERROR` and the other statuses derived from a system call),
/// or 0 if none has happened yet. Thread-local, like `errno`; never cleared by success.
#[no_mangle]
pub extern "C" fn p99_last_errno() -> c_int {
    guard_or(0, || LAST_ERRNO.with(|e| e.get()))
}

/// Describes the most recent failure of a libp99 call on the calling thread: a detailed
/// English text when the call had more to say than its status (which configuration field is
/// wrong, which system call failed and why, the verifier log of a rejected XDP program, the
/// message of a caught panic), otherwise the status's own text (as `p99_status_str`). "" if no
/// call has failed on this thread yet. Never NULL.
///
/// Per thread: failures on other threads do not change it. Lifetime: the string belongs to
/// libp99 and stays valid and unchanged until the next libp99 call on this thread that
/// returns a failure (successful calls leave it alone), or until the thread exits; copy it
/// to keep it longer.
#[no_mangle]
pub extern "C" fn p99_last_error_message() -> *const c_char {
    guard_or(c"".as_ptr(), || {
        let last = LAST_FAILURE.with(|l| l.get());
        if last & HAS_DETAIL != 0 {
            if let Some(text) =
                LAST_DETAIL.try_with(|d| d.borrow().as_ref().map(|t| t.as_ptr())).ok().flatten()
            {
                // The CString's heap buffer stays put until a later detailed failure replaces
                // it.
                return text;
            }
        }
        match p99_status::from_u32(last as u32) {
            Some(s) => s.message().as_ptr().cast(),
            None => c"".as_ptr(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_message() -> String {
        // SAFETY: p99_last_error_message never returns NULL and the string is NUL-terminated.
        unsafe { CStr::from_ptr(p99_last_error_message()) }.to_str().unwrap().to_string()
    }

    #[test]
    fn panic_becomes_status_with_its_message() {
        let s = guard(|| panic!("boom at the boundary"));
        assert_eq!(s, p99_status::Panic);
        assert!(last_message().contains("boom at the boundary"), "{}", last_message());
    }

    #[test]
    fn last_error_message_follows_failures_and_ignores_successes() {
        std::thread::spawn(|| {
            assert_eq!(last_message(), "");
            assert_eq!(
                guard(|| Err(Failure::invalid("the frame size is odd"))),
                p99_status::InvalidArgument
            );
            assert_eq!(last_message(), "the frame size is odd");
            assert_eq!(guard(|| Ok(())), p99_status::Ok);
            assert_eq!(last_message(), "the frame size is odd", "success must not clear it");
            assert_eq!(guard(|| Err(p99_status::NotFound.into())), p99_status::NotFound);
            assert_eq!(last_message(), "not found", "a plain failure gives its status text");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn null_arguments_are_named() {
        fn body(p: *const u32) -> CResult {
            let _ = c_arg!(slice p, 3)?;
            Ok(())
        }
        assert_eq!(guard(|| body(std::ptr::null())), p99_status::NullParameter);
        assert_eq!(last_message(), "`p` is NULL");
        let empty: *const u32 = std::ptr::null();
        assert!(c_arg!(slice empty, 0).is_ok());
    }

    #[test]
    fn io_error_records_errno() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(p99_status::from_io_error(&e), p99_status::IoError);
        assert_eq!(p99_last_errno(), libc::ECONNRESET);
    }

    /// A struct that grew once: version 1 was {struct_size, a} (8 bytes); `b` came later.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Grown {
        struct_size: u32,
        a: u32,
        b: u64,
    }
    // SAFETY: repr(C), struct_size first, integer fields, `b` appended after the v1 size.
    unsafe impl Versioned for Grown {
        const NAME: &'static str = "grown";
        const FIRST_SIZE: usize = 8;
    }
    const DEFAULTS: Grown = Grown { struct_size: 16, a: 1, b: 2 };

    #[test]
    fn versioned_in_reads_what_the_caller_has_and_defaults_the_rest() {
        // A v1 caller: 8 bytes, `b` unknown to it.
        let v1: [u32; 2] = [8, 77];
        let p = v1.as_ptr().cast::<Grown>();
        let g = c_arg!(versioned_in p, DEFAULTS).unwrap();
        assert_eq!((g.a, g.b), (77, 2));
        // A caller of this version.
        let full = Grown { struct_size: 16, a: 5, b: 6 };
        let p = &full as *const Grown;
        assert_eq!(c_arg!(versioned_in p, DEFAULTS).unwrap(), full);
        // Too small, implausible, NULL.
        let tiny: [u32; 2] = [4, 0];
        let p = tiny.as_ptr().cast::<Grown>();
        assert_eq!(
            c_arg!(versioned_in p, DEFAULTS).unwrap_err().status(),
            p99_status::InvalidArgument
        );
        let huge: [u32; 2] = [1 << 20, 0];
        let p = huge.as_ptr().cast::<Grown>();
        assert_eq!(
            c_arg!(versioned_in p, DEFAULTS).unwrap_err().status(),
            p99_status::InvalidArgument
        );
        let p: *const Grown = std::ptr::null();
        assert_eq!(
            c_arg!(versioned_in p, DEFAULTS).unwrap_err().status(),
            p99_status::NullParameter
        );
    }

    #[test]
    fn versioned_in_accepts_a_newer_struct_only_with_a_zero_tail() {
        // A newer caller: 24 bytes; the 8 bytes this version does not know.
        let mut newer: [u64; 3] = [0; 3];
        newer[0] = 24 | (9 << 32);
        newer[1] = 10;
        let p = newer.as_ptr().cast::<Grown>();
        let g = c_arg!(versioned_in p, DEFAULTS).unwrap();
        assert_eq!((g.a, g.b), (9, 10));
        newer[2] = 1 << 40;
        let p = newer.as_ptr().cast::<Grown>();
        let e = c_arg!(versioned_in p, DEFAULTS).unwrap_err();
        assert_eq!(e.status(), p99_status::InvalidArgument);
    }

    #[test]
    fn versioned_out_writes_at_most_struct_size_and_zeroes_unknown_fields() {
        let value = Grown { struct_size: 16, a: 0xaaaa_aaaa, b: u64::MAX };
        // v1 caller: 8 bytes declared, the guard word after them must survive.
        let mut v1: [u32; 4] = [8, 0, 0xdead_beef, 0xdead_beef];
        let p = v1.as_mut_ptr().cast::<Grown>();
        c_arg!(versioned_out p).unwrap().write(value);
        assert_eq!(v1, [8, 0xaaaa_aaaa, 0xdead_beef, 0xdead_beef]);
        // Newer caller: 24 bytes; the last 8 are zeroed.
        let mut newer: [u64; 4] = [24, 0, u64::MAX, 0x5555];
        let p = newer.as_mut_ptr().cast::<Grown>();
        c_arg!(versioned_out p).unwrap().write(value);
        assert_eq!(newer, [24 | (0xaaaa_aaaa << 32), u64::MAX, 0, 0x5555]);
        // Refused before anything is written.
        let mut tiny: [u32; 2] = [3, 7];
        let p = tiny.as_mut_ptr().cast::<Grown>();
        assert!(c_arg!(versioned_out p).is_err());
        assert_eq!(tiny, [3, 7]);
    }

    // The tests below are the ones `make miri` runs under Miri besides those above: each walks
    // a pointer form with memory of exactly the size C promised (heap buffers, not arrays
    // with room to spare), so that Miri flags any byte read or written past it, a use after
    // `_free`, a leak, or a reference made from an unaligned or dangling pointer.

    struct Thing {
        v: Vec<u32>,
    }
    impl Handle for Thing {}

    fn sum(h: *const Thing) -> Result<u32, Failure> {
        let t = c_arg!(handle h)?;
        Ok(t.v.iter().sum())
    }

    fn free(h: *mut Thing) -> Option<Box<Thing>> {
        c_arg!(owned h)
    }

    #[test]
    fn handle_lives_from_into_c_until_taken_back_once() {
        let h = Thing { v: vec![1, 2, 3] }.into_c();
        assert_eq!(sum(h).unwrap(), 6);
        assert_eq!(sum(h).unwrap(), 6, "a borrow leaves the handle alive");
        assert_eq!(sum(std::ptr::null()).unwrap_err().status(), p99_status::NullParameter);
        assert_eq!(free(h).map(|t| t.v), Some(vec![1, 2, 3]));
        assert!(free(std::ptr::null_mut()).is_none(), "freeing NULL is a no-op");
    }

    fn fill(fail: bool, out: *mut u64, extra: *mut u32) -> CResult {
        let out = c_arg!(out out)?;
        let extra = c_arg!(opt_out extra);
        if fail {
            return Err(Failure::invalid("refused"));
        }
        if let Some(e) = extra {
            e.write(7);
        }
        out.write(u64::MAX);
        Ok(())
    }

    #[test]
    fn out_parameters_are_written_once_and_only_on_success() {
        // Uninitialised memory, as C's `uint64_t v;`: written, never read, by the library.
        let mut v = std::mem::MaybeUninit::<u64>::uninit();
        assert_eq!(guard(|| fill(false, v.as_mut_ptr(), std::ptr::null_mut())), p99_status::Ok);
        // SAFETY: the call succeeded, so it wrote `v`.
        assert_eq!(unsafe { v.assume_init() }, u64::MAX);
        let (mut v, mut e) = (Box::new(5u64), Box::new(1u32));
        let (pv, pe) = (&mut *v as *mut u64, &mut *e as *mut u32);
        assert_eq!(guard(|| fill(true, pv, pe)), p99_status::InvalidArgument);
        assert_eq!((*v, *e), (5, 1), "nothing written on failure");
        assert_eq!(guard(|| fill(false, pv, pe)), p99_status::Ok);
        assert_eq!((*v, *e), (u64::MAX, 7));
        assert_eq!(guard(|| fill(false, std::ptr::null_mut(), pe)), p99_status::NullParameter);
        assert_eq!(last_message(), "`out` is NULL");
    }

    fn copy_name(buf: *mut u8, n: usize, name: *const c_char, cfg: *mut Grown) -> CResult {
        let buf = c_arg!(slice_mut buf, n)?;
        let name = c_arg!(cstr name)?;
        let cfg = c_arg!(mut cfg)?;
        let bytes = name.to_bytes();
        let k = bytes.len().min(buf.len());
        buf[..k].copy_from_slice(&bytes[..k]);
        cfg.a = k as u32;
        Ok(())
    }

    #[test]
    fn buffers_and_strings_borrow_exactly_what_the_caller_gave() {
        let mut g = Box::new(DEFAULTS);
        let pg = &mut *g as *mut Grown;
        // A heap buffer of exactly 3 bytes and a string longer than it.
        let mut heap = vec![0u8; 3].into_boxed_slice();
        assert_eq!(
            guard(|| copy_name(heap.as_mut_ptr(), 3, c"xyzzy".as_ptr(), pg)),
            p99_status::Ok
        );
        assert_eq!((&*heap, g.a), (&b"xyz"[..], 3));
        // A string shorter than the buffer: its NUL ends the read.
        let name = std::ffi::CString::new("q").unwrap();
        assert_eq!(guard(|| copy_name(heap.as_mut_ptr(), 3, name.as_ptr(), pg)), p99_status::Ok);
        assert_eq!((&*heap, g.a), (&b"qyz"[..], 1));
        // No elements: NULL and a dangling pointer are both accepted and never touched.
        assert_eq!(guard(|| copy_name(std::ptr::null_mut(), 0, c"a".as_ptr(), pg)), p99_status::Ok);
        let dangling = std::ptr::NonNull::<u8>::dangling().as_ptr();
        assert_eq!(guard(|| copy_name(dangling, 0, c"a".as_ptr(), pg)), p99_status::Ok);
        assert_eq!(g.a, 0);
        // NULLs are named, and nothing is written before they are found.
        assert_eq!(
            guard(|| copy_name(std::ptr::null_mut(), 1, c"a".as_ptr(), pg)),
            p99_status::NullParameter
        );
        assert_eq!(last_message(), "`buf` is NULL");
        assert_eq!(
            guard(|| copy_name(heap.as_mut_ptr(), 3, std::ptr::null(), pg)),
            p99_status::NullParameter
        );
        assert_eq!(last_message(), "`name` is NULL");
        assert_eq!(
            guard(|| copy_name(heap.as_mut_ptr(), 3, c"a".as_ptr(), std::ptr::null_mut())),
            p99_status::NullParameter
        );
        assert_eq!(last_message(), "`cfg` is NULL");
        assert_eq!(&*heap, b"qyz");
        // A length no memory can hold is refused before a slice is made.
        assert_eq!(
            guard(|| copy_name(heap.as_mut_ptr(), usize::MAX, c"a".as_ptr(), pg)),
            p99_status::InvalidArgument
        );
        let words: *const u64 = heap.as_ptr().cast();
        // SAFETY: refused on the length before the pointer is used.
        let r = unsafe { slice_from(words, usize::MAX / 4, "words") };
        assert_eq!(r.unwrap_err().status(), p99_status::InvalidArgument);
    }

    #[test]
    fn last_error_message_outlives_successes_and_follows_new_failures() {
        std::thread::spawn(|| {
            assert_eq!(guard(|| Err(Failure::invalid("first"))), p99_status::InvalidArgument);
            let p = p99_last_error_message();
            for _ in 0..3 {
                assert_eq!(guard(|| Ok(())), p99_status::Ok);
                assert_eq!(guard_or(1u8, || 2u8), 2);
            }
            // SAFETY: only successes since: the text is still the library's, unchanged.
            assert_eq!(unsafe { CStr::from_ptr(p) }.to_str(), Ok("first"));
            // A NUL inside a message cannot end it early.
            assert_eq!(guard(|| Err(Failure::invalid("a\0b"))), p99_status::InvalidArgument);
            assert_eq!(last_message(), "a b");
            // Panics: a String payload, and one that is not text; guard_or's fallback value.
            assert_eq!(guard(|| panic!("{} at {}", "boom", 7)), p99_status::Panic);
            assert!(last_message().ends_with("boom at 7"), "{}", last_message());
            assert_eq!(guard_or(9u8, || std::panic::panic_any(5u32)), 9);
            assert!(last_message().ends_with("non-text panic payload"), "{}", last_message());
            // A plain failure after a detailed one gives its status text.
            assert_eq!(guard(|| Err(p99_status::Busy.into())), p99_status::Busy);
            assert_eq!(last_message(), "busy");
        })
        .join()
        .unwrap();
    }

    /// A struct of exactly `size` bytes on the heap, as a C caller of that header version
    /// would pass it: `struct_size` set, `fill` in every other byte.
    fn c_struct(size: usize, fill: u8) -> Box<[u8]> {
        let mut b = vec![fill; size].into_boxed_slice();
        b[..4].copy_from_slice(&(size as u32).to_ne_bytes());
        b
    }

    /// `defaults` writes the caller's size exactly: all of a first-published struct, and for a
    /// larger (newer) struct this library's fields then zeros, never a byte past the end.
    fn defaults_fit<T: Versioned>(defaults: unsafe extern "C" fn(*mut T) -> p99_status) {
        let ours = std::mem::size_of::<T>();
        for size in [T::FIRST_SIZE, ours, ours + 12] {
            let mut b = c_struct(size, 0xee);
            // SAFETY: `size` writable bytes whose first 4 hold struct_size (byte-wise access
            // only, so no alignment is needed).
            assert_eq!(unsafe { defaults(b.as_mut_ptr().cast()) }, p99_status::Ok, "{}", T::NAME);
            assert_eq!(&b[..4], &(size as u32).to_ne_bytes(), "{}: struct_size kept", T::NAME);
            assert!(
                b[ours.min(size)..].iter().all(|&x| x == 0),
                "{}: unknown tail zeroed",
                T::NAME
            );
            // Read back as a caller-filled struct of the same size: accepted.
            let p = b.as_ptr().cast::<T>();
            // SAFETY: as above, readable.
            let r = unsafe { read_versioned(p, defaults_value::<T>(defaults), "config") };
            assert!(r.is_ok(), "{}: its own defaults refused at size {size}", T::NAME);
        }
        let mut b = c_struct(T::FIRST_SIZE - 1, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { defaults(b.as_mut_ptr().cast()) }, p99_status::InvalidArgument);
    }

    fn defaults_value<T: Versioned>(defaults: unsafe extern "C" fn(*mut T) -> p99_status) -> T {
        let mut v = std::mem::MaybeUninit::<T>::zeroed();
        // SAFETY: a writable T whose struct_size is set first.
        unsafe {
            v.as_mut_ptr().cast::<u32>().write(std::mem::size_of::<T>() as u32);
            assert_eq!(defaults(v.as_mut_ptr()), p99_status::Ok);
            v.assume_init()
        }
    }

    #[test]
    fn every_defaults_call_writes_exactly_the_callers_struct() {
        use crate::ffi::{cache, engine, tls, xdp};
        defaults_fit(cache::p99_cache_config_defaults);
        defaults_fit(engine::p99_engine_config_defaults);
        defaults_fit(engine::p99_engine_callbacks_defaults);
        defaults_fit(tls::p99_tls_config_defaults);
        defaults_fit(xdp::umem::p99_xdp_umem_config_defaults);
        defaults_fit(xdp::socket::p99_xdp_socket_config_defaults);
    }

    #[test]
    fn versioned_in_reads_no_byte_past_a_first_published_struct() {
        // Grown's first layout is 8 bytes: a heap buffer of exactly that, unaligned for Grown
        // (an odd offset in a larger allocation would hide overreads, so the buffer is its own
        // allocation and the read is byte-wise).
        let b = c_struct(8, 0x11);
        let g = {
            let p = b.as_ptr().cast::<Grown>();
            c_arg!(versioned_in p, DEFAULTS).unwrap()
        };
        assert_eq!((g.struct_size, g.a, g.b), (8, 0x1111_1111, DEFAULTS.b));
        // A newer caller's zero tail is read (and accepted) up to its end, no further.
        let mut b = c_struct(40, 0);
        b[4] = 3;
        let p = b.as_ptr().cast::<Grown>();
        assert_eq!(c_arg!(versioned_in p, DEFAULTS).unwrap().a, 3);
        b[39] = 1;
        let p = b.as_ptr().cast::<Grown>();
        assert_eq!(
            c_arg!(versioned_in p, DEFAULTS).unwrap_err().status(),
            p99_status::InvalidArgument
        );
    }
}
