//! The controller.

/// `kubewire gateway` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
}
