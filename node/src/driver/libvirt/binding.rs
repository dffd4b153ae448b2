//! The part of libvirt's C API the VM driver uses, loaded when the daemon
//! starts (`dlopen` of `libvirt.so.0`) rather than linked at build time: every
//! build has the VM driver, a host without libvirt's library only lacks VMs
//! (the driver's fingerprint says so), and building needs no libvirt headers.
//!
//! Each wrapper owns one libvirt reference and frees it on drop. libvirt's
//! objects are reference counted and its API is thread-safe, so the wrappers
//! are `Send` and `Sync`. Errors are read right after the failing call, on the
//! same thread (libvirt keeps the last error per thread). Every call blocks:
//! callers run them on a blocking thread.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_ulong, c_ulonglong, c_void};
use std::sync::OnceLock;

/// The soname of libvirt's C library (Debian package `libvirt0`).
pub const LIBRARY: &str = "libvirt.so.0";

type Ptr = *mut c_void;

/// What a libvirt call reported.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

/// `virDomainInfo`.
#[repr(C)]
#[derive(Default)]
pub struct Info {
    pub state: u8,
    pub max_mem_kib: c_ulong,
    pub memory_kib: c_ulong,
    pub vcpus: u16,
    pub cpu_time_ns: c_ulonglong,
}

struct Api {
    connect_open: unsafe extern "C" fn(*const c_char) -> Ptr,
    connect_get_type: unsafe extern "C" fn(Ptr) -> *const c_char,
    connect_get_version: VersionFn,
    connect_get_lib_version: VersionFn,
    domain_lookup_by_name: ByStrFn,
    domain_lookup_by_uuid_string: ByStrFn,
    domain_define_xml: ByStrFn,
    domain_create: unsafe extern "C" fn(Ptr) -> c_int,
    domain_shutdown: unsafe extern "C" fn(Ptr) -> c_int,
    domain_destroy: unsafe extern "C" fn(Ptr) -> c_int,
    domain_undefine: unsafe extern "C" fn(Ptr) -> c_int,
    domain_is_active: unsafe extern "C" fn(Ptr) -> c_int,
    domain_get_uuid_string: unsafe extern "C" fn(Ptr, *mut c_char) -> c_int,
    domain_get_name: unsafe extern "C" fn(Ptr) -> *const c_char,
    domain_get_info: unsafe extern "C" fn(Ptr, *mut Info) -> c_int,
    domain_free: unsafe extern "C" fn(Ptr) -> c_int,
    pool_lookup_by_name: ByStrFn,
    pool_free: unsafe extern "C" fn(Ptr) -> c_int,
    vol_lookup_by_name: ByStrFn,
    vol_create_xml: unsafe extern "C" fn(Ptr, *const c_char, c_uint) -> Ptr,
    vol_delete: unsafe extern "C" fn(Ptr, c_uint) -> c_int,
    vol_upload: unsafe extern "C" fn(Ptr, Ptr, c_ulonglong, c_ulonglong, c_uint) -> c_int,
    vol_get_path: unsafe extern "C" fn(Ptr) -> *mut c_char,
    vol_free: unsafe extern "C" fn(Ptr) -> c_int,
    stream_new: unsafe extern "C" fn(Ptr, c_uint) -> Ptr,
    stream_send: unsafe extern "C" fn(Ptr, *const c_char, usize) -> c_int,
    stream_finish: unsafe extern "C" fn(Ptr) -> c_int,
    stream_abort: unsafe extern "C" fn(Ptr) -> c_int,
    stream_free: unsafe extern "C" fn(Ptr) -> c_int,
    get_last_error_message: unsafe extern "C" fn() -> *const c_char,
    set_error_func: unsafe extern "C" fn(Ptr, Option<unsafe extern "C" fn(Ptr, Ptr)>),
}

/// libvirt prints every error to stderr unless given a handler; the driver
/// reports its own.
unsafe extern "C" fn quiet(_: Ptr, _: Ptr) {}

/// One symbol of the library, as the function type of the field it fills.
macro_rules! symbol {
    ($handle:expr, $name:literal) => {{
        // SAFETY: a NUL-terminated name; dlsym only reads it.
        let p = unsafe { libc::dlsym($handle, concat!($name, "\0").as_ptr().cast()) };
        if p.is_null() {
            return Err(format!("{LIBRARY} has no {} (libvirt older than 1.0.6?)", $name));
        }
        // SAFETY: the symbol is libvirt's function of that name, whose C
        // signature the field's type spells (libvirt's API is stable).
        unsafe { std::mem::transmute::<*mut c_void, _>(p) }
    }};
}

// The field each symbol fills names its type (see `symbol!`).
#[allow(clippy::missing_transmute_annotations)]
fn open_library() -> Result<Api, String> {
    let name = CString::new(LIBRARY).expect("no NUL in the soname");
    // SAFETY: dlopen with a valid C string; the handle is never closed, so
    // the symbols stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!(
            "libvirt's library ({LIBRARY}) is not installed (Debian: apt-get install libvirt0)"
        ));
    }
    let api = Api {
        connect_open: symbol!(handle, "virConnectOpen"),
        connect_get_type: symbol!(handle, "virConnectGetType"),
        connect_get_version: symbol!(handle, "virConnectGetVersion"),
        connect_get_lib_version: symbol!(handle, "virConnectGetLibVersion"),
        domain_lookup_by_name: symbol!(handle, "virDomainLookupByName"),
        domain_lookup_by_uuid_string: symbol!(handle, "virDomainLookupByUUIDString"),
        domain_define_xml: symbol!(handle, "virDomainDefineXML"),
        domain_create: symbol!(handle, "virDomainCreate"),
        domain_shutdown: symbol!(handle, "virDomainShutdown"),
        domain_destroy: symbol!(handle, "virDomainDestroy"),
        domain_undefine: symbol!(handle, "virDomainUndefine"),
        domain_is_active: symbol!(handle, "virDomainIsActive"),
        domain_get_uuid_string: symbol!(handle, "virDomainGetUUIDString"),
        domain_get_name: symbol!(handle, "virDomainGetName"),
        domain_get_info: symbol!(handle, "virDomainGetInfo"),
        domain_free: symbol!(handle, "virDomainFree"),
        pool_lookup_by_name: symbol!(handle, "virStoragePoolLookupByName"),
        pool_free: symbol!(handle, "virStoragePoolFree"),
        vol_lookup_by_name: symbol!(handle, "virStorageVolLookupByName"),
        vol_create_xml: symbol!(handle, "virStorageVolCreateXML"),
        vol_delete: symbol!(handle, "virStorageVolDelete"),
        vol_upload: symbol!(handle, "virStorageVolUpload"),
        vol_get_path: symbol!(handle, "virStorageVolGetPath"),
        vol_free: symbol!(handle, "virStorageVolFree"),
        stream_new: symbol!(handle, "virStreamNew"),
        stream_send: symbol!(handle, "virStreamSend"),
        stream_finish: symbol!(handle, "virStreamFinish"),
        stream_abort: symbol!(handle, "virStreamAbort"),
        stream_free: symbol!(handle, "virStreamFree"),
        get_last_error_message: symbol!(handle, "virGetLastErrorMessage"),
        set_error_func: symbol!(handle, "virSetErrorFunc"),
    };
    // SAFETY: a handler that ignores its arguments, valid forever.
    unsafe { (api.set_error_func)(std::ptr::null_mut(), Some(quiet)) };
    Ok(api)
}

/// The library, loaded on first use; why not, if it cannot be.
fn api() -> Result<&'static Api, Error> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(open_library).as_ref().map_err(|why| Error(why.clone()))
}

/// Whether libvirt's library can be loaded, and why not.
pub fn available() -> Result<(), Error> {
    api().map(drop)
}

/// This thread's last libvirt error.
fn last_error(api: &Api) -> Error {
    // SAFETY: returns a pointer to a static or thread-local C string.
    let message = unsafe { (api.get_last_error_message)() };
    Error(if message.is_null() { "unknown libvirt error".into() } else { text(message) })
}

/// A C string libvirt keeps (never freed here).
fn text(p: *const c_char) -> String {
    // SAFETY: libvirt returns NUL-terminated strings, checked non-null by callers.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn c_string(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error(format!("{s:?} contains a NUL byte")))
}

/// A returned object, or this thread's last error when it is null.
fn object(api: &Api, p: Ptr) -> Result<Ptr, Error> {
    if p.is_null() { Err(last_error(api)) } else { Ok(p) }
}

/// A call's status: -1 is an error.
fn status(api: &Api, rc: c_int) -> Result<c_int, Error> {
    if rc < 0 { Err(last_error(api)) } else { Ok(rc) }
}

/// A call that takes an object and a string and returns an object.
type ByStrFn = unsafe extern "C" fn(Ptr, *const c_char) -> Ptr;
/// A call that writes a version number.
type VersionFn = unsafe extern "C" fn(Ptr, *mut c_ulong) -> c_int;

/// `pick`'s call on the live object `owner` with `arg`: the object it
/// returns, or this thread's last error.
fn by_str(owner: Ptr, arg: &str, pick: impl FnOnce(&Api) -> ByStrFn) -> Result<Ptr, Error> {
    let api = api()?;
    let arg = c_string(arg)?;
    // SAFETY: a live object and a C string alive for the call.
    object(api, unsafe { pick(api)(owner, arg.as_ptr()) })
}

/// A connection to a hypervisor; kept for the life of the process.
pub struct Connection(Ptr);
/// A domain (a VM) defined on a connection.
pub struct Domain(Ptr);
/// A storage pool.
pub struct Pool(Ptr);
/// A storage volume.
pub struct Volume(Ptr);
/// A data stream (a volume's upload); aborted on drop unless finished.
pub struct Stream {
    ptr: Ptr,
    finished: bool,
}

// SAFETY: libvirt's objects are reference counted and its API may be called
// from any thread (libvirt documents its public API as thread-safe).
unsafe impl Send for Connection {}
unsafe impl Sync for Connection {}
unsafe impl Send for Domain {}
unsafe impl Sync for Domain {}
unsafe impl Send for Pool {}
unsafe impl Send for Volume {}
unsafe impl Send for Stream {}

impl Connection {
    pub fn open(uri: &str) -> Result<Connection, Error> {
        let api = api()?;
        let uri = c_string(uri)?;
        // SAFETY: a valid C string, alive for the call.
        object(api, unsafe { (api.connect_open)(uri.as_ptr()) }).map(Connection)
    }

    /// The hypervisor driver's name (`QEMU`, `TEST`).
    pub fn driver_type(&self) -> Result<String, Error> {
        let api = api()?;
        // SAFETY: a live connection; the string belongs to libvirt.
        let p = unsafe { (api.connect_get_type)(self.0) };
        if p.is_null() { Err(last_error(api)) } else { Ok(text(p)) }
    }

    /// The hypervisor's version, major * 1,000,000 + minor * 1,000 + micro.
    pub fn hyp_version(&self) -> Result<u64, Error> {
        self.version(|api| api.connect_get_version)
    }

    /// The library's version, encoded as [`Connection::hyp_version`].
    pub fn lib_version(&self) -> Result<u64, Error> {
        self.version(|api| api.connect_get_lib_version)
    }

    fn version(&self, pick: impl FnOnce(&Api) -> VersionFn) -> Result<u64, Error> {
        let api = api()?;
        let mut v: c_ulong = 0;
        // SAFETY: a live connection and a valid out pointer.
        status(api, unsafe { pick(api)(self.0, &mut v) })?;
        Ok(v)
    }

    pub fn lookup_domain_by_name(&self, name: &str) -> Result<Domain, Error> {
        by_str(self.0, name, |api| api.domain_lookup_by_name).map(Domain)
    }

    pub fn lookup_domain_by_uuid_string(&self, uuid: &str) -> Result<Domain, Error> {
        by_str(self.0, uuid, |api| api.domain_lookup_by_uuid_string).map(Domain)
    }

    /// Defines (does not start) a persistent domain.
    pub fn define_domain_xml(&self, xml: &str) -> Result<Domain, Error> {
        by_str(self.0, xml, |api| api.domain_define_xml).map(Domain)
    }

    pub fn lookup_storage_pool_by_name(&self, name: &str) -> Result<Pool, Error> {
        by_str(self.0, name, |api| api.pool_lookup_by_name).map(Pool)
    }

    pub fn new_stream(&self) -> Result<Stream, Error> {
        let api = api()?;
        // SAFETY: a live connection; flags 0 (a blocking stream).
        object(api, unsafe { (api.stream_new)(self.0, 0) }).map(|ptr| Stream { ptr, finished: false })
    }
}

impl Domain {
    fn call(&self, f: impl FnOnce(&Api, Ptr) -> c_int) -> Result<c_int, Error> {
        let api = api()?;
        status(api, f(api, self.0))
    }

    /// Starts the defined domain.
    pub fn create(&self) -> Result<(), Error> {
        // SAFETY (each call below): a live domain reference.
        self.call(|api, d| unsafe { (api.domain_create)(d) }).map(drop)
    }

    /// Asks the guest to shut down (ACPI).
    pub fn shutdown(&self) -> Result<(), Error> {
        self.call(|api, d| unsafe { (api.domain_shutdown)(d) }).map(drop)
    }

    /// Pulls the plug.
    pub fn destroy(&self) -> Result<(), Error> {
        self.call(|api, d| unsafe { (api.domain_destroy)(d) }).map(drop)
    }

    pub fn undefine(&self) -> Result<(), Error> {
        self.call(|api, d| unsafe { (api.domain_undefine)(d) }).map(drop)
    }

    pub fn is_active(&self) -> Result<bool, Error> {
        self.call(|api, d| unsafe { (api.domain_is_active)(d) }).map(|n| n == 1)
    }

    pub fn uuid_string(&self) -> Result<String, Error> {
        // VIR_UUID_STRING_BUFLEN: 36 characters and a NUL.
        let mut buf = [0 as c_char; 37];
        // SAFETY: a buffer of the size libvirt writes into.
        self.call(|api, d| unsafe { (api.domain_get_uuid_string)(d, buf.as_mut_ptr()) })?;
        Ok(text(buf.as_ptr()))
    }

    pub fn name(&self) -> Result<String, Error> {
        let api = api()?;
        // SAFETY: a live domain; the string lives as long as the domain.
        let p = unsafe { (api.domain_get_name)(self.0) };
        if p.is_null() { Err(last_error(api)) } else { Ok(text(p)) }
    }

    /// State, memory (KiB) and CPU time (ns).
    pub fn info(&self) -> Result<Info, Error> {
        let mut info = Info::default();
        // SAFETY: a valid out pointer to a `virDomainInfo`.
        self.call(|api, d| unsafe { (api.domain_get_info)(d, &mut info) })?;
        Ok(info)
    }
}

impl Pool {
    pub fn lookup_storage_vol_by_name(&self, name: &str) -> Result<Volume, Error> {
        by_str(self.0, name, |api| api.vol_lookup_by_name).map(Volume)
    }

    pub fn create_volume_xml(&self, xml: &str) -> Result<Volume, Error> {
        let api = api()?;
        let xml = c_string(xml)?;
        // SAFETY: as above; flags 0.
        object(api, unsafe { (api.vol_create_xml)(self.0, xml.as_ptr(), 0) }).map(Volume)
    }
}

impl Volume {
    pub fn delete(&self) -> Result<(), Error> {
        let api = api()?;
        // SAFETY: a live volume; flags 0.
        status(api, unsafe { (api.vol_delete)(self.0, 0) }).map(drop)
    }

    /// Starts an upload of `length` bytes at `offset` through `stream`.
    pub fn upload(&self, stream: &Stream, offset: u64, length: u64) -> Result<(), Error> {
        let api = api()?;
        // SAFETY: a live volume and stream; flags 0.
        status(api, unsafe { (api.vol_upload)(self.0, stream.ptr, offset, length, 0) }).map(drop)
    }

    /// The volume's path on the host.
    pub fn path(&self) -> Result<String, Error> {
        let api = api()?;
        // SAFETY: a live volume; the string is ours to free.
        let p = unsafe { (api.vol_get_path)(self.0) };
        if p.is_null() {
            return Err(last_error(api));
        }
        let path = text(p);
        // SAFETY: allocated by libvirt with malloc, freed once.
        unsafe { libc::free(p.cast()) };
        Ok(path)
    }
}

impl Stream {
    /// Sends some of `data`; returns how much was taken.
    pub fn send(&self, data: &[u8]) -> Result<usize, Error> {
        let api = api()?;
        // SAFETY: a live stream; the slice is valid for `data.len()` bytes.
        let n = status(api, unsafe { (api.stream_send)(self.ptr, data.as_ptr().cast(), data.len()) })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub fn finish(mut self) -> Result<(), Error> {
        let api = api()?;
        self.finished = true;
        // SAFETY: a live stream, finished once.
        status(api, unsafe { (api.stream_finish)(self.ptr) }).map(drop)
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: drops this wrapper's one reference.
            unsafe { (api.domain_free)(self.0) };
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: as above.
            unsafe { (api.pool_free)(self.0) };
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: as above.
            unsafe { (api.vol_free)(self.0) };
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: an unfinished stream is aborted before its reference goes.
            unsafe {
                if !self.finished {
                    (api.stream_abort)(self.ptr);
                }
                (api.stream_free)(self.ptr);
            }
        }
    }
}
