//! stub

use crate::Ctx;

/// Runs the controller.
pub async fn run(_ctx: Ctx) {
    futures::future::pending::<()>().await;
}
