//! `--ordered-compare` and `--push-compare`: two ways of draining the same
//! load through Warren, in alternating rounds of one run (see `ordered` and
//! `push`), printed as one table with the median ratio.

use crate::cli::Args;
use crate::warren::Warren;
use crate::{grpc_client, machine, ordered, push, WarrenInfo};

/// Runs the selected comparison; whether it went through.
pub async fn run(
    args: &Args,
    warren: &mut Warren,
    info: &mut WarrenInfo,
    amqp: &lapin::Connection,
) -> anyhow::Result<bool> {
    let (group, partitions, keys) = if args.push_compare {
        (String::new(), 1, 1)
    } else {
        (
            args.ordered_group.clone(),
            args.ordered_partitions,
            args.ordered_keys,
        )
    };
    let settings = ordered::Settings {
        group,
        partitions,
        keys,
        messages: args.messages,
        size: args.size.first().copied().unwrap_or(256),
        prefetch: args.prefetch,
        ack_batch: args.ack_batch,
        rounds: args.ordered_rounds,
        pid: warren.pid,
    };
    let measured = async {
        let grpc = grpc_client(args, warren).await?;
        if args.push_compare {
            push::run(amqp, grpc, &warren.http, &settings).await
        } else {
            ordered::run(amqp, grpc, &settings).await
        }
    };
    let measured = tokio::select! {
        rows = measured => rows,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    info.exit = warren.stop().await;
    let rows = measured?;
    let (base, other, name) = if args.push_compare {
        ("subscribe", "push", "push_compare")
    } else {
        ("plain", "ordered", "ordered_compare")
    };
    println!("{}", ordered::table(&rows, base, other));
    if let Some(path) = &args.json {
        let mut report = serde_json::json!({
            "machine": machine(),
            "command": std::env::args().collect::<Vec<_>>(),
        });
        report[name] = serde_json::to_value(&rows)?;
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(true)
}
