from mfllm.data import UserProfile, persona_text


def test_persona_uses_every_present_field_in_event_language() -> None:
    user = UserProfile(gender="male", location="北京", description="爱跑步", followers_count=2500, friends_count=80,
                       statuses_count=12_000, verified=True, verified_reason="某机构")
    text = persona_text(user, "zh")
    for expected in ("性别：男", "地区：北京", "粉丝数：1千–1万", "关注数：不足100", "活跃度：经常发帖", "认证：已认证（某机构）", "简介：爱跑步"):
        assert expected in text
    assert "未知" not in text
    english = persona_text(user, "en")
    assert "gender: male" in english and "followers: 1k–10k" in english and "unknown" not in english


def test_persona_says_unknown_only_for_absent_fields() -> None:
    text = persona_text(UserProfile(followers_count=5), "en")
    assert "followers: under 100" in text
    assert text.count("unknown") == 6  # gender, location, following, activity, verified, bio
    assert "female" not in persona_text(UserProfile(), "en") and "女" not in persona_text(UserProfile(), "zh")


def test_short_persona_for_mean_field_keeps_key_fields() -> None:
    user = UserProfile(gender="female", location="上海", followers_count=200_000, verified=False, description="x" * 200)
    short = persona_text(user, "zh", short=True)
    assert short == "性别：女；地区：上海；粉丝数：10万以上；认证：未认证"
    assert len(persona_text(user, "zh")) < 200 + 100  # long bios are clipped
