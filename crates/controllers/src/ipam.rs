//! stub

use crate::Ctx;

/// Runs the controller.
pub async fn run(_ctx: Ctx) {
    futures::future::pending::<()>().await;
}

/// Checks the flags.
pub fn check_config(_c: &crate::Config) -> Result<(), crate::Error> {
    Ok(())
}
