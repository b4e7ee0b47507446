//! Every test resets the database and then counts exactly: two test
//! processes sharing one database would see each other's rows. cargo-ephem
//! gives each shard its own Postgres and runs one test at a time per shard
//! when there are at least as many shards as threads.

use postgres_redis_example::{connect_db, UserRepo};

async fn repo() -> UserRepo {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by cargo ephem (see ephem.toml)");
    let repo = UserRepo::new(connect_db(&url).await.expect("Postgres accepts connections"));
    repo.reset().await.unwrap();
    repo
}

async fn create_and_count(n: usize) {
    let repo = repo().await;
    for i in 0..n {
        repo.create(&format!("user{i}@example.com")).await.unwrap();
    }
    // Gives a concurrent test on a shared database time to interfere.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(repo.count().await.unwrap(), n as i64);
}

#[tokio::test]
async fn count_after_10_inserts() {
    create_and_count(10).await;
}

#[tokio::test]
async fn count_after_25_inserts() {
    create_and_count(25).await;
}

#[tokio::test]
async fn count_after_40_inserts() {
    create_and_count(40).await;
}

#[tokio::test]
async fn empty_after_reset() {
    let repo = repo().await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(repo.count().await.unwrap(), 0);
}

#[tokio::test]
async fn emails_are_unique() {
    let repo = repo().await;
    repo.create("dup@example.com").await.unwrap();
    assert!(repo.create("dup@example.com").await.is_err());
}

#[tokio::test]
async fn find_returns_the_created_id() {
    let repo = repo().await;
    let id = repo.create("lola@example.com").await.unwrap();
    assert_eq!(repo.find("lola@example.com").await.unwrap(), Some(id));
    assert_eq!(repo.find("nobody@example.com").await.unwrap(), None);
}
