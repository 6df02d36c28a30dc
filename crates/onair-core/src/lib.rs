//! Domain types that more than one onair service needs. No I/O lives here
//! except the in-process [`bus::LocalBus`].

pub mod bus;
pub mod directory;
mod error_code;
pub mod ids;
pub mod lease;
pub mod model;
mod session_id;
pub mod time;
pub mod turn_rest;

pub use bus::{Bus, BusError, BusItem, LocalBus, Subscription};
pub use directory::{Directory, DirectoryError, MemoryDirectory, PARKED_MAX, PeerRecord, RelayNode};
pub use error_code::ErrorCode;
pub use ids::{IdError, NodeId, PeerId, RecordingId, StreamId};
pub use lease::{Leases, MemoryLeases};
pub use model::{Recording, RecordingState, Stream, StreamEvent, StreamState, TITLE_MAX_CHARS, is_plain_file_name};
pub use session_id::SessionId;
