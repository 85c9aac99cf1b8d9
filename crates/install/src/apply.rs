//! `kubewire install` (and the lab's `lab up`): the objects applied server-side, one by
//! one in their order, as `kubectl apply --server-side --force-conflicts` does.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::{Error, describe};

/// Applies `objects` with server-side apply as `field_manager`, taking over fields
/// another manager set (the install owns what it writes). Creates what is missing,
/// updates what differs, leaves what another manager added alone.
pub async fn apply(
    client: &kube::Client,
    objects: &[Value],
    field_manager: &str,
) -> Result<(), Error> {
    let params = PatchParams::apply(field_manager).force();
    for obj in objects {
        let what = describe(obj);
        let invalid = |reason: &str| Error::Object {
            what: what.clone(),
            reason: reason.to_owned(),
        };
        let api_version = obj["apiVersion"]
            .as_str()
            .ok_or_else(|| invalid("no apiVersion"))?;
        let kind = obj["kind"].as_str().ok_or_else(|| invalid("no kind"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or_else(|| invalid("no metadata.name"))?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(name, &params, &Patch::Apply(obj))
            .await
            .map_err(|source| Error::Apply { what, source })?;
    }
    Ok(())
}
