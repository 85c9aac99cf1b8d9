//! Server-side printing: `meta.k8s.io/v1 Table` with kube-apiserver's columns, which is
//! what `kubectl get` asks for and prints.

use serde_json::{Value, json};

use crate::resources::ResourceType;
use crate::util::{now_secs, parse_rfc3339, str_at};

/// Whether the Accept header asks for a Table.
pub(crate) fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
        || {
            // kubectl lists Table first; honour it anywhere when no plain JSON comes before it.
            let parts: Vec<&str> = accept.split(',').collect();
            parts
                .iter()
                .position(|p| p.contains("as=Table"))
                .is_some_and(|i| {
                    parts[..i]
                        .iter()
                        .all(|p| p.contains("as=") || p.trim().is_empty())
                })
        }
}

pub(crate) const CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn col(name: &str, ty: &str, format: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn columns(kind: &str) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age = col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    let s = |n: &str, d: &str| col(n, "string", "", d, 0);
    let wide = |n: &str, d: &str| col(n, "string", "", d, 1);
    match kind {
        "Service" => vec![
            name,
            s("Type", "type determines how the Service is exposed."),
            s("Cluster-IP", "clusterIP is the IP address of the service."),
            s(
                "External-IP",
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            s(
                "Port(s)",
                "The list of ports that are exposed by this service.",
            ),
            age,
            wide(
                "Selector",
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Endpoints" => vec![
            name,
            s(
                "Endpoints",
                "Endpoints is the list of endpoints in the subsets.",
            ),
            age,
        ],
        "Pod" => vec![
            name,
            s(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            s(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            s(
                "Restarts",
                "The number of times the containers in this pod have been restarted.",
            ),
            age,
            wide("IP", "podIP address allocated to the pod."),
            wide("Node", "Name of the Node that the Pod is running on."),
            wide(
                "Nominated Node",
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            wide(
                "Readiness Gates",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "Namespace" => vec![name, s("Status", "The status of the namespace"), age],
        "Node" => vec![
            name,
            s("Status", "The status of the node"),
            s("Roles", "The roles of the node"),
            age,
            s("Version", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of addresses reachable to the node."),
        ],
        "Deployment" => vec![
            name,
            s("Ready", "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "integer",
                "",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                0,
            ),
            col(
                "Available",
                "integer",
                "",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                0,
            ),
            age,
        ],
        "ReplicaSet" => vec![
            name,
            int("Desired", "Number of desired pods."),
            int("Current", "Number of actually running pods."),
            int("Ready", "Number of pods with ready state."),
            age,
        ],
        "StatefulSet" => vec![name, s("Ready", "Number of the pod with ready state"), age],
        "ReplicationController" => vec![
            name,
            int("Desired", "Number of desired pods."),
            int("Current", "Number of actually running pods."),
            int("Ready", "Number of pods with ready state."),
            age,
        ],
        "Job" => vec![
            name,
            s("Status", "Status of the job."),
            s("Completions", "The completion status of the job."),
            s("Duration", "Time required to complete the job."),
            age,
        ],
        "CronJob" => vec![
            name,
            s("Schedule", "The schedule for running the job."),
            s("Timezone", "The time zone for the schedule."),
            s("Suspend", "Whether the cron job is suspended."),
            int("Active", "The number of currently running jobs."),
            s("Last Schedule", "When the job was last scheduled."),
            age,
        ],
        "PersistentVolumeClaim" => vec![
            name,
            s("Status", "The phase of the claim."),
            s("Volume", "The volume bound to the claim."),
            s("Capacity", "The capacity of the bound volume."),
            s("Access Modes", "The access modes of the claim."),
            s("StorageClass", "The storage class of the claim."),
            age,
        ],
        "PersistentVolume" => vec![
            name,
            s("Capacity", "The capacity of the volume."),
            s("Access Modes", "The access modes of the volume."),
            s(
                "Reclaim Policy",
                "What happens to the volume when its claim is deleted.",
            ),
            s("Status", "The phase of the volume."),
            s("Claim", "The claim bound to the volume."),
            s("StorageClass", "The storage class of the volume."),
            age,
        ],
        "StorageClass" => vec![
            name,
            s("Provisioner", "The provisioner of the class."),
            s("ReclaimPolicy", "The reclaim policy of its volumes."),
            s("VolumeBindingMode", "When its volumes are bound."),
            age,
        ],
        "DaemonSet" => vec![
            name,
            int(
                "Desired",
                "The desired number of nodes that should be running the daemon pod.",
            ),
            int(
                "Current",
                "The number of nodes that are running at least 1 daemon pod.",
            ),
            int(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            int(
                "Up-to-date",
                "The total number of nodes that are running updated daemon pod.",
            ),
            int(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            s(
                "Node Selector",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            age,
        ],
        "EndpointSlice" => vec![
            name,
            s(
                "AddressType",
                "The IP protocol for this slice of endpoints.",
            ),
            s("Ports", "The ports exposed by this slice of endpoints."),
            s("Endpoints", "The endpoints in this slice."),
            age,
        ],
        "Ingress" => vec![
            name,
            s("Class", "The name of the IngressClass resource."),
            s("Hosts", "Hosts that incoming requests are matched against."),
            s(
                "Address",
                "Address is a list containing ingress points for the load-balancer.",
            ),
            s("Ports", "Ports of TLS configurations that open."),
            age,
        ],
        "IngressClass" => vec![
            name,
            s(
                "Controller",
                "Controller that is responsible for handling this class.",
            ),
            s(
                "Parameters",
                "A reference to a resource with additional parameters.",
            ),
            age,
        ],
        "NetworkPolicy" => vec![
            name,
            s(
                "Pod-Selector",
                "Selects the pods to which this NetworkPolicy object applies.",
            ),
            age,
        ],
        "ConfigMap" => vec![name, int("Data", "Number of data entries."), age],
        "Secret" => vec![
            name,
            s("Type", "The type of the secret."),
            int("Data", "The number of data entries in the secret."),
            age,
        ],
        "ServiceAccount" => vec![name, int("Secrets", "The number of secrets."), age],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => vec![
            name,
            int("Webhooks", "The number of webhooks in the configuration."),
            age,
        ],
        "Lease" => vec![name, s("Holder", "The holder of the lease."), age],
        "Role" | "ClusterRole" => vec![
            name,
            col(
                "Created At",
                "date",
                "",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
                0,
            ),
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            s(
                "Role",
                "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
            ),
            age,
            wide("Users", "Users in the roleBinding"),
            wide("Groups", "Groups in the roleBinding"),
            wide("ServiceAccounts", "ServiceAccounts in the roleBinding"),
        ],
        "Event" => vec![
            s("Last Seen", "Time when this Event was last seen."),
            s("Type", "Type of this event (Normal, Warning)."),
            s("Reason", "Reason why this event was generated."),
            s("Object", "The object that this event is about."),
            wide("Subobject", "The subobject that this event is about."),
            wide("Source", "The component reporting this event."),
            s(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            wide(
                "First Seen",
                "The time at which the event was first recorded.",
            ),
            wide("Count", "The number of times this event has occurred."),
            wide("Name", "Name must be unique within a namespace."),
        ],
        _ => vec![name, age],
    }
}

fn int(n: &str, d: &str) -> Value {
    col(n, "integer", "", d, 0)
}

/// kubectl's short access modes (`RWO,ROX`).
fn access_modes(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m.as_str()? {
            "ReadWriteOnce" => Some("RWO"),
            "ReadOnlyMany" => Some("ROX"),
            "ReadWriteMany" => Some("RWX"),
            "ReadWriteOncePod" => Some("RWOP"),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn len_of(v: &Value) -> usize {
    v.as_object()
        .map(|m| m.len())
        .or(v.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn label_selector(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values = join_strs(&e["values"], ",");
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op} ({values})"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn age_of(o: &Value, field: &str) -> String {
    str_at(o, field)
        .and_then(parse_rfc3339)
        .map(|t| human_duration(now_secs() - t))
        .unwrap_or_else(|| "<unknown>".into())
}

fn extra_cells(kind: &str, o: &Value) -> Option<Vec<Value>> {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let st = &o["status"];
    Some(match kind {
        "ReplicaSet" => vec![
            json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
            json!(n(&st["replicas"])),
            json!(n(&st["readyReplicas"])),
            json!(age(o)),
        ],
        "StatefulSet" => vec![
            json!(format!(
                "{}/{}",
                n(&st["readyReplicas"]),
                o["spec"]["replicas"].as_i64().unwrap_or(1)
            )),
            json!(age(o)),
        ],
        "ReplicationController" => vec![
            json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
            json!(n(&st["replicas"])),
            json!(n(&st["readyReplicas"])),
            json!(age(o)),
        ],
        "Job" => {
            let cond = |t: &str| {
                st["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if cond("Complete") {
                "Complete"
            } else if cond("Failed") {
                "Failed"
            } else if cond("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match o["spec"]["completions"].as_i64() {
                Some(c) => format!("{}/{c}", n(&st["succeeded"])),
                None => format!(
                    "{}/1 of {}",
                    n(&st["succeeded"]),
                    n(&o["spec"]["parallelism"])
                ),
            };
            let start = str_at(o, "status.startTime").and_then(parse_rfc3339);
            let end = str_at(o, "status.completionTime")
                .and_then(parse_rfc3339)
                .unwrap_or_else(now_secs);
            let duration = start.map_or(String::new(), |s| human_duration(end - s));
            vec![
                json!(status),
                json!(completions),
                json!(duration),
                json!(age(o)),
            ]
        }
        "CronJob" => vec![
            json!(o["spec"]["schedule"].as_str().unwrap_or("")),
            json!(o["spec"]["timeZone"].as_str().unwrap_or("<none>")),
            json!(if o["spec"]["suspend"] == true {
                "True"
            } else {
                "False"
            }),
            json!(len_of(&st["active"])),
            json!(if st["lastScheduleTime"].is_string() {
                age_of(o, "status.lastScheduleTime")
            } else {
                "<none>".into()
            }),
            json!(age(o)),
        ],
        "PersistentVolumeClaim" => vec![
            json!(st["phase"].as_str().unwrap_or("")),
            json!(o["spec"]["volumeName"].as_str().unwrap_or("")),
            json!(st["capacity"]["storage"].as_str().unwrap_or("")),
            json!(access_modes(&st["accessModes"])),
            json!(o["spec"]["storageClassName"].as_str().unwrap_or("<unset>")),
            json!(age(o)),
        ],
        "PersistentVolume" => {
            let claim = &o["spec"]["claimRef"];
            vec![
                json!(o["spec"]["capacity"]["storage"].as_str().unwrap_or("")),
                json!(access_modes(&o["spec"]["accessModes"])),
                json!(
                    o["spec"]["persistentVolumeReclaimPolicy"]
                        .as_str()
                        .unwrap_or("")
                ),
                json!(st["phase"].as_str().unwrap_or("")),
                json!(if claim.is_object() {
                    format!(
                        "{}/{}",
                        claim["namespace"].as_str().unwrap_or(""),
                        claim["name"].as_str().unwrap_or("")
                    )
                } else {
                    String::new()
                }),
                json!(o["spec"]["storageClassName"].as_str().unwrap_or("")),
                json!(age(o)),
            ]
        }
        "StorageClass" => vec![
            json!(o["provisioner"].as_str().unwrap_or("")),
            json!(o["reclaimPolicy"].as_str().unwrap_or("")),
            json!(o["volumeBindingMode"].as_str().unwrap_or("")),
            json!(age(o)),
        ],
        "DaemonSet" => {
            let ns = Some(crate::util::labels_string(
                &o["spec"]["template"]["spec"]["nodeSelector"],
            ))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
            vec![
                json!(n(&st["desiredNumberScheduled"])),
                json!(n(&st["currentNumberScheduled"])),
                json!(n(&st["numberReady"])),
                json!(n(&st["updatedNumberScheduled"])),
                json!(n(&st["numberAvailable"])),
                json!(ns),
                json!(age(o)),
            ]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    p["port"]
                        .as_i64()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "<unset>".into())
                })
                .collect();
            let addrs: Vec<&str> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                })
                .collect();
            let mut eps = addrs.iter().take(3).copied().collect::<Vec<_>>().join(",");
            if addrs.len() > 3 {
                eps.push_str(&format!(" + {} more...", addrs.len() - 3));
            }
            vec![
                json!(o["addressType"].as_str().unwrap_or("")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(none_if_empty(eps)),
                json!(age(o)),
            ]
        }
        "Ingress" => {
            let hosts: Vec<&str> = o["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["host"].as_str())
                .collect();
            let addrs: Vec<&str> = st["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let tls = o["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty());
            vec![
                json!(o["spec"]["ingressClassName"].as_str().unwrap_or("<none>")),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(addrs.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                json!(age(o)),
            ]
        }
        "IngressClass" => {
            let p = &o["spec"]["parameters"];
            let params = match p["kind"].as_str() {
                Some(k) => format!("{}/{}", k, p["name"].as_str().unwrap_or("")),
                None => "<none>".into(),
            };
            vec![
                json!(o["spec"]["controller"].as_str().unwrap_or("")),
                json!(params),
                json!(age(o)),
            ]
        }
        "NetworkPolicy" => vec![
            json!(label_selector(&o["spec"]["podSelector"])),
            json!(age(o)),
        ],
        "ConfigMap" => vec![
            json!(len_of(&o["data"]) + len_of(&o["binaryData"])),
            json!(age(o)),
        ],
        "Secret" => vec![
            json!(o["type"].as_str().unwrap_or("Opaque")),
            json!(len_of(&o["data"]) + len_of(&o["stringData"])),
            json!(age(o)),
        ],
        "ServiceAccount" => vec![json!(len_of(&o["secrets"])), json!(age(o))],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            vec![json!(len_of(&o["webhooks"])), json!(age(o))]
        }
        "Lease" => vec![
            json!(o["spec"]["holderIdentity"].as_str().unwrap_or("")),
            json!(age(o)),
        ],
        "Role" | "ClusterRole" => {
            vec![json!(str_at(o, "metadata.creationTimestamp").unwrap_or(""))]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| -> String {
                o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| {
                        let name = s["name"].as_str().unwrap_or("");
                        match kind {
                            "ServiceAccount" => {
                                format!("{}/{name}", s["namespace"].as_str().unwrap_or(""))
                            }
                            _ => name.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(format!(
                    "{}/{}",
                    o["roleRef"]["kind"].as_str().unwrap_or(""),
                    o["roleRef"]["name"].as_str().unwrap_or("")
                )),
                json!(age(o)),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        _ => return None,
    })
}

fn event_cells(o: &Value) -> Vec<Value> {
    let last = ["lastTimestamp", "eventTime", "metadata.creationTimestamp"]
        .iter()
        .find(|f| str_at(o, f).is_some())
        .map(|f| age_of(o, f))
        .unwrap_or_else(|| "<unknown>".into());
    let first = ["firstTimestamp", "eventTime", "metadata.creationTimestamp"]
        .iter()
        .find(|f| str_at(o, f).is_some())
        .map(|f| age_of(o, f))
        .unwrap_or_else(|| "<unknown>".into());
    // core/v1 and events.k8s.io/v1 name the same things differently.
    let io = if o["involvedObject"].is_object() {
        &o["involvedObject"]
    } else {
        &o["regarding"]
    };
    let object = format!(
        "{}/{}",
        io["kind"].as_str().unwrap_or("").to_lowercase(),
        io["name"].as_str().unwrap_or("")
    );
    let source = o["source"]["component"]
        .as_str()
        .or(o["reportingComponent"].as_str())
        .or(o["reportingController"].as_str())
        .unwrap_or("");
    vec![
        json!(last),
        json!(o["type"].as_str().unwrap_or("")),
        json!(o["reason"].as_str().unwrap_or("")),
        json!(object),
        json!(io["fieldPath"].as_str().unwrap_or("")),
        json!(source),
        json!(
            o["message"]
                .as_str()
                .or(o["note"].as_str())
                .unwrap_or("")
                .trim()
        ),
        json!(first),
        json!(
            o["count"]
                .as_i64()
                .or(o["deprecatedCount"].as_i64())
                .unwrap_or(1)
        ),
        json!(o["metadata"]["name"].as_str().unwrap_or("")),
    ]
}

fn age(obj: &Value) -> String {
    str_at(obj, "metadata.creationTimestamp")
        .and_then(parse_rfc3339)
        .map(|t| human_duration(now_secs() - t))
        .unwrap_or_else(|| "<unknown>".into())
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn join_strs(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_default()
}

fn service_cells(o: &Value) -> Vec<Value> {
    let spec = &o["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let cluster_ip = none_if_empty(spec["clusterIP"].as_str().unwrap_or("").to_string());
    let external_ips = join_strs(&spec["externalIPs"], ",");
    let external = match ty {
        "ExternalName" => spec["externalName"].as_str().unwrap_or("").to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .map(str::to_string)
                })
                .collect();
            if !external_ips.is_empty() {
                ips.push(external_ips.clone());
            }
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => none_if_empty(external_ips),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|n| *n != 0) {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    let selector = crate::util::labels_string(&spec["selector"]);
    vec![
        json!(ty),
        json!(cluster_ip),
        json!(external),
        json!(none_if_empty(ports.join(","))),
        json!(age(o)),
        json!(none_if_empty(selector)),
    ]
}

/// kube's `formatEndpoints`: `ip:port` for every address and port, at most three, then
/// `+ N more...`.
fn endpoints_cell(o: &Value) -> String {
    let mut list = Vec::new();
    let mut count = 0usize;
    for ss in o["subsets"].as_array().into_iter().flatten() {
        let addrs: Vec<&str> = ss["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip"].as_str())
            .collect();
        let ports = ss["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() {
            for a in &addrs {
                count += 1;
                if list.len() < 3 {
                    list.push(a.to_string());
                }
            }
        } else {
            for p in &ports {
                for a in &addrs {
                    count += 1;
                    if list.len() < 3 {
                        let port = p["port"].as_i64().unwrap_or(0);
                        if a.contains(':') {
                            list.push(format!("[{a}]:{port}"));
                        } else {
                            list.push(format!("{a}:{port}"));
                        }
                    }
                }
            }
        }
    }
    let mut s = list.join(",");
    if count > list.len() {
        s.push_str(&format!(" + {} more...", count - list.len()));
    }
    none_if_empty(s)
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let containers = o["spec"]["containers"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    let statuses = o["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let mut status = o["status"]["reason"]
        .as_str()
        .or(o["status"]["phase"].as_str())
        .unwrap_or("Unknown")
        .to_string();
    for s in &statuses {
        if let Some(r) = s["state"]["waiting"]["reason"]
            .as_str()
            .or(s["state"]["terminated"]["reason"].as_str())
        {
            status = r.to_string();
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{containers}")),
        json!(status),
        json!(restarts),
        json!(age(o)),
        json!(none_if_empty(
            o["status"]["podIP"].as_str().unwrap_or("").to_string()
        )),
        json!(none_if_empty(
            o["spec"]["nodeName"].as_str().unwrap_or("").to_string()
        )),
        json!(none_if_empty(
            o["status"]["nominatedNodeName"]
                .as_str()
                .unwrap_or("")
                .to_string()
        )),
        json!("<none>"),
    ]
}

fn node_cells(o: &Value) -> Vec<Value> {
    let ready = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = o["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .collect();
    roles.sort();
    let internal = o["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP");
    vec![
        json!(status),
        json!(none_if_empty(roles.join(","))),
        json!(age(o)),
        json!(
            o["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or("")
        ),
        json!(
            internal
                .and_then(|a| a["address"].as_str())
                .unwrap_or("<none>")
        ),
    ]
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    if kind == "Event" {
        return event_cells(o);
    }
    let mut c = vec![json!(o["metadata"]["name"].as_str().unwrap_or(""))];
    if let Some(extra) = extra_cells(kind, o) {
        c.extend(extra);
        return c;
    }
    match kind {
        "Service" => c.extend(service_cells(o)),
        "Endpoints" => c.extend([json!(endpoints_cell(o)), json!(age(o))]),
        "Pod" => c.extend(pod_cells(o)),
        "Namespace" => c.extend([
            json!(o["status"]["phase"].as_str().unwrap_or("Active")),
            json!(age(o)),
        ]),
        "Node" => c.extend(node_cells(o)),
        "Deployment" => {
            let st = &o["status"];
            let n = |v: &Value| v.as_i64().unwrap_or(0);
            c.extend([
                json!(format!(
                    "{}/{}",
                    n(&st["readyReplicas"]),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
                json!(n(&st["updatedReplicas"])),
                json!(n(&st["availableReplicas"])),
                json!(age(o)),
            ]);
        }
        _ => c.push(json!(age(o))),
    }
    c
}

/// A Table of `items`; `include_object` is `None`, `Object` or (default) `Metadata`.
pub(crate) fn table(rt: &ResourceType, items: &[Value], list_meta: Value, include: &str) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"].clone(),
                }),
            };
            let cells = if rt.custom {
                custom_cells(rt, o)
            } else {
                cells(rt.kind, o)
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let columns = if rt.custom {
        custom_columns(rt)
    } else {
        columns(rt.kind)
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// A custom resource's columns: Name, then its `additionalPrinterColumns` (Age when it
/// has none), as the apiextensions server prints them.
fn custom_columns(rt: &ResourceType) -> Vec<Value> {
    let mut cols = vec![col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )];
    if rt.columns.is_empty() {
        cols.push(col("Age", "date", "", "", 0));
    }
    for c in rt.columns {
        let priority = u8::try_from(c.priority).unwrap_or(0);
        cols.push(col(&c.name, &c.ty, "", &c.description, priority));
    }
    cols
}

fn custom_cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let mut cells = vec![json!(o["metadata"]["name"].as_str().unwrap_or(""))];
    if rt.columns.is_empty() {
        cells.push(json!(age(o)));
    }
    for c in rt.columns {
        let v = json_path(o, &c.json_path);
        cells.push(match (c.ty.as_str(), v) {
            (_, None) => Value::Null,
            ("date", Some(Value::String(t))) => {
                json!(
                    parse_rfc3339(t)
                        .map(|t| human_duration(now_secs() - t))
                        .unwrap_or_else(|| t.clone())
                )
            }
            (_, Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)))) => v.clone(),
            (_, Some(v)) => json!(v.to_string()),
        });
    }
    cells
}

/// The subset of JSONPath that printer columns use: `.a.b`, `[N]` and
/// `[?(@.type=="Ready")]` (first match).
pub(crate) fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = o;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let sel = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = sel.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(['"', '\'']);
                // Strings compare as text; numbers and booleans as JSON.
                let want_json = serde_json::from_str::<Value>(want).ok();
                cur = cur.as_array()?.iter().find(|i| {
                    i.get(field.trim()).is_some_and(|v| {
                        v.as_str() == Some(want)
                            || (!v.is_string() && want_json.as_ref() == Some(v))
                    })
                })?;
            } else {
                cur = cur.as_array()?.get(sel.parse::<usize>().ok()?)?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

/// kube's `duration.HumanDuration`, used in AGE columns.
fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let m = s / 60;
    let h = s / 3600;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let d = h / 24 % 365;
        if d == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{d}d", h / 24 / 365)
        }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::lookup;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86_400 * 3), "3d");
    }

    #[test]
    fn endpoints_and_services() {
        let ep = json!({"metadata": {"name": "website"}, "subsets": [{"addresses": [{"ip": "10.10.10.10"}], "ports": [{"port": 80}]}]});
        assert_eq!(endpoints_cell(&ep), "10.10.10.10:80");
        let many = json!({"subsets": [{"addresses": [{"ip": "a"}, {"ip": "b"}, {"ip": "c"}, {"ip": "d"}], "ports": [{"port": 1}]}]});
        assert_eq!(endpoints_cell(&many), "a:1,b:1,c:1 + 1 more...");
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.1.0",
            "ports": [{"port": 80, "nodePort": 31100, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let c = cells("Service", &svc);
        assert_eq!(
            c[..5],
            [
                json!("web"),
                json!("NodePort"),
                json!("10.96.1.0"),
                json!("<none>"),
                json!("80:31100/TCP,53/UDP")
            ]
        );
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.1", "ports": []}});
        assert_eq!(cells("Service", &lb)[3], json!("<pending>"));
        let rt = lookup("", "v1", "endpoints").unwrap();
        let t = table(rt, &[ep], json!({}), "");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 3);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn more_kinds() {
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"port": 80}], "endpoints": [{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.2.5"]}]});
        assert_eq!(
            cells("EndpointSlice", &slice)[..4],
            [
                json!("web-abc"),
                json!("IPv4"),
                json!("80"),
                json!("10.244.1.5,10.244.2.5")
            ]
        );
        let ing = json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": "kubewire", "rules": [{"host": "a.example"}]}});
        assert_eq!(
            cells("Ingress", &ing)[1..5],
            [
                json!("kubewire"),
                json!("a.example"),
                json!(""),
                json!("80")
            ]
        );
        let np = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}}});
        assert_eq!(cells("NetworkPolicy", &np)[1], "app=db");
        let ev = json!({"metadata": {"name": "e1"}, "type": "Normal", "reason": "Started", "message": "ok",
            "involvedObject": {"kind": "Pod", "name": "web-1"}});
        let c = cells("Event", &ev);
        assert_eq!(
            (c[1].as_str(), c[3].as_str(), c[9].as_str()),
            (Some("Normal"), Some("pod/web-1"), Some("e1"))
        );
        assert_eq!(columns("Event").len(), c.len());
        for kind in [
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "EndpointSlice",
            "Ingress",
            "IngressClass",
            "NetworkPolicy",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "MutatingWebhookConfiguration",
            "Lease",
            "Service",
            "Pod",
            "Node",
            "Deployment",
            "Endpoints",
            "Namespace",
        ] {
            let o = json!({"metadata": {"name": "x"}});
            assert_eq!(columns(kind).len(), cells(kind, &o).len(), "{kind}");
        }
    }

    #[test]
    fn printer_column_paths() {
        let o = json!({"spec": {"hosts": ["a", "b"]}, "status": {"conditions": [
            {"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}]}});
        assert_eq!(json_path(&o, ".spec.hosts[1]"), Some(&json!("b")));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Programmed\")].status"),
            Some(&json!("False"))
        );
        assert_eq!(json_path(&o, ".spec.nope"), None);
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
    }
}
