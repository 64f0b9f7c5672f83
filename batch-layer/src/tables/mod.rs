//! The batch layer's data as DataFusion tables.
//!
//! ```text
//!  SQL filters ─► bounds (time range, equalities; pure) ─► EventsTable::scan
//!                                                        └► archive snapshot ─► Parquet files
//! ```
//!
//! - [`bounds`]: what a query's filters say about a time column, for pruning.
//! - [`events`]: the `events` table over the archive, and the listing of archive files that
//!   recompute jobs read.
//! - [`results`]: the Arrow types of a view's rows, as the recompute query types them.

pub mod bounds;
pub mod events;
pub mod results;

pub use events::{EventsTable, STORE_URL, register_store};
