//! The cache tests flush Redis and count keys: a Redis shared between two
//! test processes would break them.

use postgres_redis_example::{connect_db, UserCache, UserRepo};

async fn setup() -> (UserRepo, UserCache) {
    let db = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by cargo ephem");
    let redis = std::env::var("REDIS_URL").expect("REDIS_URL is set by cargo ephem");
    let repo = UserRepo::new(connect_db(&db).await.unwrap());
    repo.reset().await.unwrap();
    let mut cache = UserCache::connect(&redis).await.expect("Redis accepts connections");
    cache.clear().await.unwrap();
    (repo, cache)
}

#[tokio::test]
async fn miss_then_hit() {
    let (repo, mut cache) = setup().await;
    let id = repo.create("a@example.com").await.unwrap();
    assert_eq!(cache.len().await.unwrap(), 0);
    assert_eq!(cache.user_id(&repo, "a@example.com").await.unwrap(), Some(id));
    assert_eq!(cache.len().await.unwrap(), 1);
    assert_eq!(cache.user_id(&repo, "a@example.com").await.unwrap(), Some(id));
}

#[tokio::test]
async fn unknown_users_are_not_cached() {
    let (repo, mut cache) = setup().await;
    assert_eq!(cache.user_id(&repo, "ghost@example.com").await.unwrap(), None);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(cache.len().await.unwrap(), 0);
}

#[tokio::test]
async fn caches_each_user_once() {
    let (repo, mut cache) = setup().await;
    for i in 0..5 {
        repo.create(&format!("u{i}@example.com")).await.unwrap();
    }
    for i in 0..5 {
        cache.user_id(&repo, &format!("u{i}@example.com")).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(cache.len().await.unwrap(), 5);
}
