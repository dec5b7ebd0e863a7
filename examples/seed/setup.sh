#!/usr/bin/env bash
# Create the users and broker configs the seed examples name. The seed's configs are Angel
# One accounts; until that adapter lands they are paper accounts with the same ids.
set -euo pipefail
tb="${TB:-trading-backend}"
for user in user1 user2 test_user_1 test_user_2; do
  $tb user create "$user" --password "example-password" --id "$user"
done
$tb broker add --user user1 --name "Primary Angel One" --config-id angel_config1
$tb broker add --user user1 --name "Secondary Angel One" --config-id angel_config2
$tb broker add --user user2 --name "Angel One" --config-id angel_config3
$tb broker add --user test_user_1 --name "Test account 1" --config-id test_config_1
$tb broker add --user test_user_2 --name "Test account 2" --config-id test_config_2
