//! A newcomer's first run: as root, in a checkout under a private home
//! (`/root` is 0700), the private cluster still starts, in a directory the
//! `postgres` user can reach; an explicit `--data-dir` it cannot reach is a
//! clear error.

use std::os::unix::fs::PermissionsExt;

use segd::cluster::{ClusterOptions, LocalCluster, data_dir};

#[test]
fn a_checkout_in_a_private_home_gets_a_reachable_data_dir() {
    let home = tempfile::Builder::new()
        .prefix("segd-home-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let checkout = home.path().join("segd");
    std::fs::create_dir_all(&checkout).unwrap();
    let dir = data_dir(None, &checkout);
    if unsafe { libc::geteuid() } != 0 {
        // Not root: PostgreSQL runs as this user, which reaches its own home.
        assert_eq!(dir, checkout.join(".segd"));
        return;
    }
    assert!(dir.starts_with("/var/tmp"), "{}", dir.display());
    assert_eq!(
        dir,
        data_dir(None, &checkout),
        "the same checkout, the same place"
    );
    assert_ne!(
        dir,
        data_dir(None, home.path()),
        "another checkout, another place"
    );
    let cluster = LocalCluster::start(&dir, ClusterOptions::default())
        .expect("the cluster starts where segd chose");
    cluster.stop().unwrap();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    // Asked for explicitly, an unreachable directory is refused, plainly.
    let explicit = checkout.join("data");
    assert_eq!(data_dir(Some(&explicit), &checkout), explicit);
    let err = LocalCluster::start(&explicit, ClusterOptions::default()).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err:#}");
}
