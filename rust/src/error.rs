//! The one error type of the native extension and its mapping to Python.

use pyo3::exceptions::{
    PyConnectionError, PyFileNotFoundError, PyOSError, PyPermissionError, PyTimeoutError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::PyErr;

/// Every failure the native code can report.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A system call failed; keeps the errno so Python sees the same `OSError`.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A peer or a frame broke the protocol (bad checksum, bad MAC, bad length).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer does not know the cluster key (or we do not know its key).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The replication link is down; the message says why it went down.
    #[error("replication link down: {0}")]
    Disconnected(String),
    /// A wait ran out of time (a barrier, a drain, a silent peer).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A path that is absolute, empty or has `.`/`..` components.
    #[error("invalid path {0:?}: must be relative to the root, without '.' or '..' components")]
    InvalidPath(String),
    /// A bad argument from the caller (mode name, key, address).
    #[error("{0}")]
    InvalidArgument(String),
    /// A saved file (e.g. a dirty map) that fails validation; never half-used.
    #[error("{path}: corrupt {what}: {reason}")]
    CorruptFile {
        /// The file, as given.
        path: String,
        /// What it should have held.
        what: &'static str,
        /// The first defect found.
        reason: String,
    },
}

/// The native extension's result type.
pub type Result<T> = std::result::Result<T, MirrorError>;

impl From<MirrorError> for PyErr {
    fn from(err: MirrorError) -> PyErr {
        match err {
            // OSError(errno, message): Python sets `.errno` and picks the subclass
            // (FileNotFoundError, PermissionError, ...) from the errno.
            MirrorError::Io(io) if io.raw_os_error().is_some() => os_error(&io),
            MirrorError::Io(io) => match io.kind() {
                std::io::ErrorKind::TimedOut => PyTimeoutError::new_err(io.to_string()),
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(io.to_string()),
                // PyO3's own mapping keeps the errno and picks the OSError subclass.
                _ => PyErr::from(io),
            },
            MirrorError::Auth(_) => PyPermissionError::new_err(err.to_string()),
            MirrorError::Disconnected(_) => PyConnectionError::new_err(err.to_string()),
            MirrorError::Timeout(_) => PyTimeoutError::new_err(err.to_string()),
            MirrorError::Protocol(_)
            | MirrorError::InvalidPath(_)
            | MirrorError::InvalidArgument(_)
            | MirrorError::CorruptFile { .. } => PyValueError::new_err(err.to_string()),
        }
    }
}

/// `OSError(errno, message)` built by Python itself, so the instance is of the
/// subclass the errno names and carries `.errno`.
fn os_error(io: &std::io::Error) -> PyErr {
    Python::attach(|py| {
        let args = (io.raw_os_error(), io.to_string());
        match py.get_type::<PyOSError>().call1(args) {
            Ok(value) => PyErr::from_value(value),
            Err(e) => e,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::{PyAnyMethods, PyTypeMethods};
    use pyo3::Python;

    fn python_type_name(err: MirrorError) -> String {
        Python::initialize();
        Python::attach(|py| {
            let py_err: PyErr = err.into();
            py_err.get_type(py).name().unwrap().to_string()
        })
    }

    #[test]
    fn io_errors_map_to_the_matching_python_exceptions() {
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "peer silent");
        assert_eq!(python_type_name(timed_out.into()), "TimeoutError");
        let missing = std::io::Error::from_raw_os_error(2);
        assert_eq!(python_type_name(missing.into()), "FileNotFoundError");
        let denied = std::io::Error::from_raw_os_error(13);
        assert_eq!(python_type_name(denied.into()), "PermissionError");
    }

    #[test]
    fn protocol_errors_are_value_errors() {
        assert_eq!(
            python_type_name(MirrorError::Protocol("bad MAC".into())),
            "ValueError"
        );
    }

    #[test]
    fn link_errors_map_to_the_exceptions_callers_catch() {
        assert_eq!(
            python_type_name(MirrorError::Auth("wrong key".into())),
            "PermissionError"
        );
        assert_eq!(
            python_type_name(MirrorError::Disconnected("reset".into())),
            "ConnectionError"
        );
        assert_eq!(
            python_type_name(MirrorError::Timeout("barrier".into())),
            "TimeoutError"
        );
        assert_eq!(
            python_type_name(MirrorError::InvalidPath("../x".into())),
            "ValueError"
        );
        let corrupt = MirrorError::CorruptFile {
            path: "/x/dirty".into(),
            what: "dirty map",
            reason: "checksum mismatch".into(),
        };
        assert_eq!(python_type_name(corrupt), "ValueError");
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(python_type_name(refused.into()), "ConnectionRefusedError");
        let timed_out = std::io::Error::from_raw_os_error(libc::ETIMEDOUT);
        assert_eq!(python_type_name(timed_out.into()), "TimeoutError");
    }

    #[test]
    fn os_errors_keep_their_errno() {
        Python::initialize();
        Python::attach(|py| {
            let err: PyErr =
                MirrorError::Io(std::io::Error::from_raw_os_error(libc::EINVAL)).into();
            let errno: i32 = err.value(py).getattr("errno").unwrap().extract().unwrap();
            assert_eq!(errno, libc::EINVAL);
        });
    }
}
