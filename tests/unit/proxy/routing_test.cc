#include "routing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace portico::proxy {
namespace {

using ::testing::ElementsAre;

constexpr int kUsers = 10'000;

std::vector<BackendConfig> makeBackends(std::vector<std::pair<std::string, double>> specs) {
  std::vector<BackendConfig> out;
  for (auto& [name, weight] : specs) {
    BackendConfig backend;
    backend.name = name;
    backend.weight = weight;
    out.push_back(backend);
  }
  return out;
}

std::vector<BackendConfig> fiveBackends() {
  return makeBackends({{"mbx1", 1}, {"mbx2", 1}, {"mbx3", 1}, {"mbx4", 1}, {"mbx5", 1}});
}

std::string userName(int i) {
  return "user" + std::to_string(i) + "@example.net";
}

const std::string& nameOf(const std::vector<BackendConfig>& backends, std::size_t index) {
  return backends.at(index).name;
}

TEST(NormaliseUserTest, LowerCasesAsciiAndTrims) {
  EXPECT_EQ(normaliseUser("Alice@Example.COM"), "alice@example.com");
  EXPECT_EQ(normaliseUser("  bob \t\r\n"), "bob");
  EXPECT_EQ(normaliseUser("MiXeD Inner Space"), "mixed inner space");
  EXPECT_EQ(normaliseUser(""), "");
  EXPECT_EQ(normaliseUser(" \t "), "");
  // Bytes outside ASCII are left alone: no locale is involved.
  EXPECT_EQ(normaliseUser("J\xC3\x96RG"), "j\xC3\x96rg");
}

TEST(BackendSelectorTest, EveryEnabledBackendOnceBestFirst) {
  BackendSelector selector(fiveBackends(), {});
  std::vector<std::size_t> order = selector.candidates("alice");
  std::vector<std::size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_THAT(sorted, ElementsAre(0, 1, 2, 3, 4));

  EXPECT_TRUE(selector.candidates("alice", std::vector<bool>(5, false)).empty());
  // Indices past the end of `enabled` count as enabled.
  EXPECT_EQ(selector.candidates("alice", {true}), order);
}

TEST(BackendSelectorTest, DeterministicAcrossInstancesAndNormalised) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector first(backends, {});
  BackendSelector second(fiveBackends(), {});
  for (int i = 0; i < 2'000; ++i) {
    std::string user = userName(i);
    ASSERT_EQ(first.candidates(user), second.candidates(user)) << user;
    std::string shouted = "  " + user + " ";
    std::transform(shouted.begin(), shouted.end(), shouted.begin(), ::toupper);
    ASSERT_EQ(first.candidates(shouted), first.candidates(user)) << user;
  }
}

// Pins the hash itself: a change here moves users between backends on an
// upgrade, and mixed-version instances would disagree. Change the expected
// values only on purpose.
TEST(BackendSelectorTest, HashIsStableAcrossVersions) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector selector(backends, {});
  std::string firsts;
  for (const char* user : {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}) {
    firsts += nameOf(backends, selector.candidates(user).front()) + " ";
  }
  EXPECT_EQ(firsts, "mbx4 mbx1 mbx4 mbx2 mbx1 mbx5 mbx2 mbx2 ");
}

TEST(BackendSelectorTest, UsersSpreadInProportionToWeight) {
  std::vector<BackendConfig> backends = makeBackends({{"a", 1}, {"b", 1}, {"c", 2}});
  BackendSelector selector(backends, {});
  std::vector<int> counts(backends.size());
  for (int i = 0; i < kUsers; ++i) {
    ++counts[selector.candidates(userName(i)).front()];
  }
  const double expected[] = {0.25, 0.25, 0.5};
  for (std::size_t b = 0; b < backends.size(); ++b) {
    EXPECT_NEAR(counts[b] / static_cast<double>(kUsers), expected[b], 0.05) << backends[b].name;
  }
}

TEST(BackendSelectorTest, EqualWeightsSpreadEvenly) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector selector(backends, {});
  std::vector<int> counts(backends.size());
  for (int i = 0; i < kUsers; ++i) {
    ++counts[selector.candidates(userName(i)).front()];
  }
  for (std::size_t b = 0; b < backends.size(); ++b) {
    EXPECT_NEAR(counts[b] / static_cast<double>(kUsers), 0.2, 0.03) << backends[b].name;
  }
}

TEST(BackendSelectorTest, DisablingOneBackendMovesOnlyItsUsers) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector selector(backends, {});
  const std::size_t removed = 2;
  std::vector<bool> enabled(backends.size(), true);
  enabled[removed] = false;
  int moved = 0;
  for (int i = 0; i < kUsers; ++i) {
    std::string user = userName(i);
    std::vector<std::size_t> before = selector.candidates(user);
    std::vector<std::size_t> after = selector.candidates(user, enabled);
    ASSERT_EQ(after.size(), backends.size() - 1);
    if (before[0] == removed) {
      ++moved;
      ASSERT_EQ(after[0], before[1]) << user;
    } else {
      ASSERT_EQ(after[0], before[0]) << user;
    }
    // The fallback order is the old order without the removed backend.
    std::erase(before, removed);
    ASSERT_EQ(after, before) << user;
  }
  EXPECT_NEAR(moved / static_cast<double>(kUsers), 0.2, 0.03);
}

TEST(BackendSelectorTest, RemovingOneBackendFromTheConfigMovesOnlyItsUsers) {
  std::vector<BackendConfig> all = fiveBackends();
  std::vector<BackendConfig> fewer = all;
  fewer.erase(fewer.begin() + 3);
  BackendSelector before(all, {});
  BackendSelector after(fewer, {});
  for (int i = 0; i < kUsers; ++i) {
    std::string user = userName(i);
    std::vector<std::size_t> old_order = before.candidates(user);
    const std::string& old_first = nameOf(all, old_order[0]);
    const std::string& new_first = nameOf(fewer, after.candidates(user)[0]);
    if (old_first == "mbx4") {
      ASSERT_EQ(new_first, nameOf(all, old_order[1])) << user;
    } else {
      ASSERT_EQ(new_first, old_first) << user;
    }
  }
}

TEST(BackendSelectorTest, AddingABackendMovesUsersOnlyToIt) {
  std::vector<BackendConfig> four = fiveBackends();
  four.pop_back();
  BackendSelector before(four, {});
  BackendSelector after(fiveBackends(), {});
  int moved = 0;
  for (int i = 0; i < kUsers; ++i) {
    std::string user = userName(i);
    std::size_t old_first = before.candidates(user)[0];
    std::size_t new_first = after.candidates(user)[0];
    if (new_first != old_first) {
      ASSERT_EQ(new_first, 4u) << user;
      ++moved;
    }
  }
  EXPECT_NEAR(moved / static_cast<double>(kUsers), 0.2, 0.03);
}

TEST(BackendSelectorTest, MapOverridesHashing) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector plain(backends, {});
  std::vector<std::size_t> hashed = plain.candidates("alice");
  std::size_t forced = hashed.back();  // the hash's last choice
  BackendSelector mapped(backends, {{"  ALICE ", nameOf(backends, forced)}});

  std::vector<std::size_t> expected = hashed;
  std::erase(expected, forced);
  expected.insert(expected.begin(), forced);
  EXPECT_EQ(mapped.candidates("alice"), expected);
  EXPECT_EQ(mapped.candidates("Alice "), expected);
  // Users not in the map are hashed as before.
  EXPECT_EQ(mapped.candidates("bob"), plain.candidates("bob"));
}

TEST(BackendSelectorTest, DisabledMappedBackendFallsBackToHashing) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector plain(backends, {});
  std::size_t forced = plain.candidates("alice").back();
  BackendSelector mapped(backends, {{"alice", nameOf(backends, forced)}});
  std::vector<bool> enabled(backends.size(), true);
  enabled[forced] = false;
  EXPECT_EQ(mapped.candidates("alice", enabled), plain.candidates("alice", enabled));
  EXPECT_EQ(mapped.candidates("alice", enabled).size(), backends.size() - 1);
}

TEST(BackendSelectorTest, MapEntryForUnknownBackendIsIgnored) {
  std::vector<BackendConfig> backends = fiveBackends();
  BackendSelector plain(backends, {});
  BackendSelector mapped(backends, {{"alice", "gone"}});
  EXPECT_EQ(mapped.candidates("alice"), plain.candidates("alice"));
}

TEST(BackendSelectorTest, ProbeUsersRouteToTheirOwnBackend) {
  char pattern[] = "/tmp/portico-routing-test-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  std::string dir = pattern;
  std::string password = dir + "/probe.pass";
  std::ofstream(password) << "secret\n";
  std::filesystem::permissions(
      password, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);

  // Pick probe users that the hash alone would send to the other backend,
  // so the test shows the pin, not luck.
  std::vector<BackendConfig> pair = makeBackends({{"mbx1", 1}, {"mbx2", 1}});
  BackendSelector plain(pair, {});
  std::string probe[2];
  for (int i = 0; probe[0].empty() || probe[1].empty(); ++i) {
    std::string user = "HealthMailbox-" + std::to_string(i);
    std::size_t hashed = plain.candidates(user)[0];
    if (probe[1 - hashed].empty()) {
      probe[1 - hashed] = user;
    }
  }
  std::string text;
  for (int b = 0; b < 2; ++b) {
    text += "[[backend]]\nname = \"mbx" + std::to_string(b + 1) +
            "\"\naddress = \"127.0.0.1:" + std::to_string(10144 + b) + "\"\nprobe_user = \"" +
            probe[b] + "\"\nprobe_password_file = \"" + password + "\"\n";
  }
  text += "[[listen]]\naddress = \"127.0.0.1:10143\"\n";
  ConfigResult result = parseConfig(text, "probe.toml");
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(result.errors.empty()) << result.errors.front();

  const Config& config = *result.config;
  BackendSelector selector(config.backends, config.routing.map);
  EXPECT_EQ(selector.candidates(probe[0]).front(), 0u);
  EXPECT_EQ(selector.candidates(probe[1]).front(), 1u);
  // Logins arrive in any case; the pin still holds.
  std::string upper = probe[0];
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  EXPECT_EQ(selector.candidates(upper).front(), 0u);
}

}  // namespace
}  // namespace portico::proxy
