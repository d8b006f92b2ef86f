//! steward-notifier: Turns events an operator must hear about into email and webhooks.
//!
//! Today the service runs the shared runtime and logs every event it receives; its own job
//! is built in its own issue on top of this skeleton.

use steward_events::Service;

/// This service on the bus.
pub const SERVICE: Service = Service::Notifier;
